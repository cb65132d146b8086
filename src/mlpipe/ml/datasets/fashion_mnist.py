"""Fashion-MNIST from its four IDX files: a local directory, or downloaded and verified."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from urllib.parse import urlsplit

from mlpipe.contracts.data import LabeledImages
from mlpipe.core.errors import DataError
from mlpipe.ml.datasets.idx import read_pairs

log = logging.getLogger(__name__)

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

# MD5 of the published .gz files: the "Get the Data" table of zalandoresearch/fashion-mnist's
# README.md, the same values as torchvision.datasets.FashionMNIST.resources.
MD5: Mapping[str, str] = MappingProxyType(
    {
        f"{TRAIN_IMAGES}.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        f"{TRAIN_LABELS}.gz": "25c81989df183df01b3e8a0aad5dffbe",
        f"{TEST_IMAGES}.gz": "bef4ecab320f06d8554ea6380940ec79",
        f"{TEST_LABELS}.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    }
)

# The first is the download link in the README (and torchvision's mirror); the second is the
# repository's data/fashion folder, which the README offers as the alternative.
MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
)

# Label i names CLASSES[i] (README.md, "Labels").
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
PIXEL_MAX = 255

_CHUNK = 1 << 20


def load_fashion_mnist(
    source: Path | None,
    *,
    cache_dir: Path,
    checksums: Mapping[str, str] = MD5,
    mirrors: Sequence[str] = MIRRORS,
    timeout: float = 30.0,
) -> LabeledImages:
    """Train then test examples pooled, from ``source`` or, when None, downloaded to ``cache_dir``.

    Files named in ``checksums`` are verified by MD5; downloads need all four ``.gz`` names there.
    """
    if source is None:
        files = _download_all(cache_dir, checksums, mirrors, timeout)
    else:
        files = _locate(source, checksums)
    pairs = [(files[TRAIN_IMAGES], files[TRAIN_LABELS]), (files[TEST_IMAGES], files[TEST_LABELS])]
    images, labels = read_pairs(pairs, len(CLASSES))
    return LabeledImages(images, labels, CLASSES, PIXEL_MAX)


def _locate(source: Path, checksums: Mapping[str, str]) -> dict[str, Path]:
    """Each file's path in ``source`` (the ``.gz`` when both exist), verified where known."""
    if not source.is_dir():
        raise DataError(
            f"{source}: not a directory; set data.source in params.yaml to the directory "
            "holding the four Fashion-MNIST files, or to data/raw/none to download them"
        )
    files: dict[str, Path] = {}
    for name in FILES:
        candidates = [path for path in (source / f"{name}.gz", source / name) if path.is_file()]
        if candidates:
            files[name] = candidates[0]
    missing = [name for name in FILES if name not in files]
    if missing:
        raise DataError(
            f"{source}: missing {', '.join(missing)}; expected the files "
            f"{', '.join(FILES)} (each may end in .gz) in this directory"
        )
    for path in files.values():
        expected = checksums.get(path.name)
        if expected is not None:
            _verify(path, expected)
    return files


def _md5(path: Path) -> str:
    """Hex MD5 of the file, read in chunks."""
    try:
        with path.open("rb") as f:
            return hashlib.file_digest(f, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})") from e


def _verify(path: Path, expected: str) -> None:
    actual = _md5(path)
    if actual != expected:
        raise DataError(f"{path}: checksum mismatch: MD5 {actual}, expected {expected}")


def _download_all(
    cache_dir: Path, checksums: Mapping[str, str], mirrors: Sequence[str], timeout: float
) -> dict[str, Path]:
    """The four ``.gz`` files in ``cache_dir``, downloading those not already there and valid."""
    unknown = [f"{name}.gz" for name in FILES if f"{name}.gz" not in checksums]
    if unknown:
        raise ValueError(f"downloads are verified, but checksums has no MD5 for {unknown}")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{cache_dir}: cannot create the download cache ({e})") from e
    files = {}
    for name in FILES:
        target = cache_dir / f"{name}.gz"
        expected = checksums[target.name]
        if not (target.is_file() and _md5(target) == expected):
            _download(target, expected, mirrors, timeout)
        files[name] = target
    return files


def _download(target: Path, expected: str, mirrors: Sequence[str], timeout: float) -> None:
    """Fetch ``target.name`` from the first mirror that serves it with the expected MD5."""
    urls = [mirror.rstrip("/") + "/" + target.name for mirror in mirrors]
    last_error = "no mirrors configured"
    for url in urls:
        log.info("downloading %s", url)
        try:
            _fetch_verified(url, target, expected, timeout)
            return
        except (OSError, http.client.HTTPException, DataError) as e:
            log.warning("download failed: %s: %s", url, e)
            last_error = f"{url}: {e}"
    raise DataError(
        f"downloading {target.name} failed from {', '.join(urls)} (last error: {last_error}); "
        f"put the four Fashion-MNIST files ({', '.join(FILES)}, .gz or not) in a directory "
        "and set data.source in params.yaml to it"
    )


def _fetch_verified(url: str, target: Path, expected: str, timeout: float) -> None:
    """Stream ``url`` to a temporary file; rename it to ``target`` only if its MD5 matches."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise DataError("only http and https mirrors are supported")
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        # The scheme is checked above, so urlopen cannot read local files.
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                f.write(chunk)
        if digest.hexdigest() != expected:
            raise DataError(f"checksum mismatch: MD5 {digest.hexdigest()}, expected {expected}")
        tmp.chmod(0o644)
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

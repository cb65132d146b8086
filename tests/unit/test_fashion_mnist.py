"""load_fashion_mnist: from a directory, and downloaded from loopback HTTP mirrors."""

from __future__ import annotations

import functools
import hashlib
import threading
from collections.abc import Callable, Iterator, Mapping
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from harness.servers import LOOPBACK, free_port

from mlpipe.core.errors import DataError
from mlpipe.ml.datasets.fashion_mnist import (
    CLASSES,
    FILES,
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    load_fashion_mnist,
)
from tests.unit.idx_writer import write_idx

N_TRAIN, N_TEST, SIDE = 20, 10, 6
RNG = np.random.default_rng(0)
TRAIN_X = RNG.integers(0, 256, size=(N_TRAIN, SIDE, SIDE), dtype=np.uint8)
TRAIN_Y = (np.arange(N_TRAIN) % 10).astype(np.uint8)
TEST_X = RNG.integers(0, 256, size=(N_TEST, SIDE, SIDE), dtype=np.uint8)
TEST_Y = (9 - np.arange(N_TEST)).astype(np.uint8)
ARRAYS = {TRAIN_IMAGES: TRAIN_X, TRAIN_LABELS: TRAIN_Y, TEST_IMAGES: TEST_X, TEST_LABELS: TEST_Y}


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def write_dataset(
    directory: Path, replace: Mapping[str, np.ndarray] | None = None, *, compress: bool = True
) -> Path:
    """The four files of ARRAYS in ``directory``, with arrays in ``replace`` written instead."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in {**ARRAYS, **(replace or {})}.items():
        write_idx(directory / (f"{name}.gz" if compress else name), array, compress=compress)
    return directory


def checksums_of(directory: Path) -> dict[str, str]:
    """MD5 of every file in ``directory``, hidden and partial ones included."""
    return {path.name: md5(path) for path in directory.iterdir()}


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "fashion")


@pytest.fixture
def checksums(dataset_dir: Path) -> dict[str, str]:
    return checksums_of(dataset_dir)


Requests = list[tuple[str, int]]
Serve = Callable[[Path], tuple[str, Requests]]


class _Handler(SimpleHTTPRequestHandler):
    """Serves a directory and records each request's path and status."""

    def __init__(self, *args: Any, requests: Requests, **kwargs: Any) -> None:
        self.requests = requests
        super().__init__(*args, **kwargs)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.requests.append((self.path, int(code)))

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start an HTTP server on 127.0.0.1 for a directory: its base URL and request log."""
    running: list[tuple[ThreadingHTTPServer, threading.Thread]] = []

    def start(directory: Path) -> tuple[str, Requests]:
        requests: Requests = []
        handler = functools.partial(_Handler, directory=str(directory), requests=requests)
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
        thread.start()
        running.append((server, thread))
        return f"http://127.0.0.1:{server.server_port}/", requests

    yield start
    for server, thread in running:
        server.shutdown()
        server.server_close()
        thread.join()


def closed_port_url() -> str:
    return f"http://{LOOPBACK}:{free_port()}/"


def load_error(source: Path | None, **options: Any) -> str:
    """The DataError message load_fashion_mnist gives for these arguments."""
    with pytest.raises(DataError) as excinfo:
        load_fashion_mnist(source, **options)
    return str(excinfo.value)


def inconsistent_dataset_error(tmp_path: Path, replace: Mapping[str, np.ndarray]) -> tuple[Path, str]:
    """Write the dataset with ``replace`` applied; its directory and the load error."""
    source = write_dataset(tmp_path / "fashion", replace)
    return source, load_error(source, cache_dir=tmp_path / "cache", checksums={})


def assert_is_the_dataset(loaded: Any) -> None:
    np.testing.assert_array_equal(loaded.images, np.concatenate([TRAIN_X, TEST_X]))
    np.testing.assert_array_equal(loaded.labels, np.concatenate([TRAIN_Y, TEST_Y]))
    assert loaded.labels.dtype == np.int64
    assert loaded.classes == CLASSES
    assert loaded.pixel_max == 255


def test_loads_gzip_files_pooling_train_then_test(
    dataset_dir: Path, checksums: dict[str, str], tmp_path: Path
) -> None:
    loaded = load_fashion_mnist(dataset_dir, cache_dir=tmp_path / "cache", checksums=checksums)

    assert len(loaded) == N_TRAIN + N_TEST
    assert_is_the_dataset(loaded)


def test_loads_uncompressed_files(tmp_path: Path) -> None:
    source = write_dataset(tmp_path / "fashion", compress=False)

    loaded = load_fashion_mnist(source, cache_dir=tmp_path / "cache", checksums={})

    assert_is_the_dataset(loaded)


def test_labels_name_the_ten_fashion_mnist_classes_in_readme_order() -> None:
    assert len(CLASSES) == 10
    assert (CLASSES[0], CLASSES[6], CLASSES[9]) == ("T-shirt/top", "Shirt", "Ankle boot")


def test_checksum_mismatch_names_file_and_both_hashes(
    dataset_dir: Path, checksums: dict[str, str], tmp_path: Path
) -> None:
    labels = dataset_dir / f"{TRAIN_LABELS}.gz"
    actual = checksums[labels.name]
    wrong = {**checksums, labels.name: "0" * 32}

    message = load_error(dataset_dir, cache_dir=tmp_path / "cache", checksums=wrong)

    assert message == f"{labels}: checksum mismatch: MD5 {actual}, expected {'0' * 32}"


def test_missing_file_lists_the_expected_files_and_directory(
    dataset_dir: Path, checksums: dict[str, str], tmp_path: Path
) -> None:
    (dataset_dir / f"{TEST_IMAGES}.gz").unlink()

    message = load_error(dataset_dir, cache_dir=tmp_path / "cache", checksums=checksums)

    assert message.startswith(f"{dataset_dir}: missing {TEST_IMAGES};")
    assert all(name in message for name in FILES)


def test_source_that_is_not_a_directory_is_reported(tmp_path: Path) -> None:
    source = tmp_path / "absent"

    message = load_error(source, cache_dir=tmp_path / "cache")

    assert message.startswith(f"{source}: not a directory; set data.source in params.yaml")


def test_label_count_differing_from_image_count_is_reported(tmp_path: Path) -> None:
    source, message = inconsistent_dataset_error(tmp_path, {TEST_LABELS: TEST_Y[:-1]})

    labels, images = source / f"{TEST_LABELS}.gz", source / f"{TEST_IMAGES}.gz"
    assert message == f"{labels}: 9 labels, but {images} has 10 images"


def test_label_outside_the_ten_classes_is_reported(tmp_path: Path) -> None:
    source, message = inconsistent_dataset_error(tmp_path, {TRAIN_LABELS: TRAIN_Y + 1})

    assert message == f"{source / f'{TRAIN_LABELS}.gz'}: label 10 outside 0..9"


def test_images_that_are_not_three_dimensional_are_reported(tmp_path: Path) -> None:
    flat = TRAIN_X.reshape(N_TRAIN, SIDE * SIDE)
    source, message = inconsistent_dataset_error(tmp_path, {TRAIN_IMAGES: flat})

    images = source / f"{TRAIN_IMAGES}.gz"
    assert message == f"{images}: expected uint8 images [N, H, W], got uint8 [20, 36]"


def test_train_and_test_image_sizes_must_agree(tmp_path: Path) -> None:
    source, message = inconsistent_dataset_error(tmp_path, {TEST_IMAGES: TEST_X[:, :5, :]})

    test_images, train_images = source / f"{TEST_IMAGES}.gz", source / f"{TRAIN_IMAGES}.gz"
    assert message == f"{test_images}: images are 5x6, but {train_images} has 6x6"


def test_download_falls_back_to_the_next_mirror_and_caches_verified_files(
    dataset_dir: Path, checksums: dict[str, str], tmp_path: Path, serve: Serve
) -> None:
    base, requests = serve(dataset_dir)
    cache_dir = tmp_path / "cache" / "fashion-mnist"

    loaded = load_fashion_mnist(
        None, cache_dir=cache_dir, checksums=checksums, mirrors=[base + "missing/", base]
    )

    assert_is_the_dataset(loaded)
    assert checksums_of(cache_dir) == checksums
    assert requests[:2] == [(f"/missing/{TRAIN_IMAGES}.gz", 404), (f"/{TRAIN_IMAGES}.gz", 200)]


def test_cached_files_with_the_right_checksum_are_not_downloaded_again(
    dataset_dir: Path, checksums: dict[str, str], tmp_path: Path, serve: Serve
) -> None:
    base, requests = serve(dataset_dir)
    cache_dir = write_dataset(tmp_path / "cache")

    loaded = load_fashion_mnist(None, cache_dir=cache_dir, checksums=checksums, mirrors=[base])

    assert_is_the_dataset(loaded)
    assert requests == []


def test_cached_file_with_a_wrong_checksum_is_downloaded_again(
    dataset_dir: Path, checksums: dict[str, str], tmp_path: Path, serve: Serve
) -> None:
    base, requests = serve(dataset_dir)
    cache_dir = write_dataset(tmp_path / "cache", {TRAIN_LABELS: TRAIN_Y[::-1]})

    loaded = load_fashion_mnist(None, cache_dir=cache_dir, checksums=checksums, mirrors=[base])

    assert_is_the_dataset(loaded)
    assert requests == [(f"/{TRAIN_LABELS}.gz", 200)]


def test_corrupt_download_is_rejected_and_the_next_mirror_used(
    dataset_dir: Path, checksums: dict[str, str], tmp_path: Path, serve: Serve
) -> None:
    corrupt_base, _ = serve(write_dataset(tmp_path / "corrupt", {TRAIN_IMAGES: TEST_X}))
    good_base, _ = serve(dataset_dir)
    cache_dir = tmp_path / "cache"

    loaded = load_fashion_mnist(
        None, cache_dir=cache_dir, checksums=checksums, mirrors=[corrupt_base, good_base]
    )

    assert_is_the_dataset(loaded)
    assert checksums_of(cache_dir) == checksums


def test_corrupt_download_leaves_nothing_in_the_cache(
    dataset_dir: Path, checksums: dict[str, str], tmp_path: Path, serve: Serve
) -> None:
    corrupt_base, _ = serve(write_dataset(tmp_path / "corrupt", {TRAIN_IMAGES: TEST_X}))
    cache_dir = tmp_path / "cache"

    message = load_error(None, cache_dir=cache_dir, checksums=checksums, mirrors=[corrupt_base])

    assert f"{TRAIN_IMAGES}.gz: checksum mismatch" in message
    assert list(cache_dir.iterdir()) == []


def test_all_mirrors_failing_names_the_urls_and_suggests_data_source(
    dataset_dir: Path, checksums: dict[str, str], tmp_path: Path, serve: Serve
) -> None:
    base, _ = serve(dataset_dir)
    mirrors = [closed_port_url(), base + "missing/"]

    message = load_error(None, cache_dir=tmp_path / "cache", checksums=checksums, mirrors=mirrors, timeout=5)

    assert message.startswith(
        f"downloading {TRAIN_IMAGES}.gz failed from {mirrors[0]}{TRAIN_IMAGES}.gz, "
        f"{mirrors[1]}{TRAIN_IMAGES}.gz (last error: {mirrors[1]}{TRAIN_IMAGES}.gz: HTTP Error 404"
    )
    assert "set data.source in params.yaml" in message

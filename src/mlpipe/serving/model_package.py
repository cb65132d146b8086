"""Reading models/package/ (package.json + the ONNX file it names) for serving, with checks.

The manifest's format is mlpipe.contracts.manifest's; this module checks a package on disk against it,
without importing torch, so it can run in the slim serve image.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlpipe.contracts.data import image_array_shape
from mlpipe.contracts.images import ImageDecoding
from mlpipe.contracts.manifest import MANIFEST_FILE, READABLE_FORMATS, PackageManifest
from mlpipe.core.errors import ArtifactError
from mlpipe.core.tables import read_json

# The V2 datatype of each NumPy dtype a package may declare for its input.
V2_DATATYPES = {"uint8": "UINT8", "float32": "FP32"}
VERSION_DIGITS = 12  # a package's version: the start of its model's sha256, like a short git hash


@dataclass(frozen=True)
class InputSpec:
    """What one request may carry: images [N, height, width] (or [N, height, width, channels])
    with pixels in 0..pixel_max, or, when ``decoding`` says how to read them, image files."""

    name: str
    height: int
    width: int
    pixel_max: int
    max_batch_size: int
    datatype: str  # V2 datatype of the prepared pixels, e.g. UINT8
    channels: int = 1
    decoding: ImageDecoding | None = None  # None: the model takes no image files

    @property
    def image_shape(self) -> tuple[int, ...]:
        """One image's shape: (height, width), or (height, width, channels) for colour."""
        return image_array_shape((self.height, self.width), self.channels)

    @property
    def dtype(self) -> str:
        """The NumPy dtype the model takes: the one ``datatype`` names."""
        return next(dtype for dtype, datatype in V2_DATATYPES.items() if datatype == self.datatype)


@dataclass(frozen=True)
class ModelPackage:
    """A checked package: the model bytes and what the manifest says about them."""

    name: str
    version: str
    model_bytes: bytes
    input: InputSpec
    output_name: str
    labels: tuple[str, ...]


def _manifest(model_dir: Path) -> dict[str, Any]:
    if not model_dir.is_dir():
        raise ArtifactError(
            f"{model_dir}: model directory not found; pass --model-dir pointing at a package "
            "written by `mlpipe package` (models/package)"
        )
    path = model_dir / MANIFEST_FILE
    raw = read_json(path, f"{model_dir} is not a model package", "rebuild it with `dvc repro package`")
    if not isinstance(raw, dict) or raw.get("format") not in READABLE_FORMATS:
        found = raw.get("format") if isinstance(raw, dict) else None
        readable = ", ".join(map(str, READABLE_FORMATS))
        raise ArtifactError(
            f"{path}: package format {found!r}, this server reads formats {readable}; "
            "rebuild the package or use a matching mlpipe version"
        )
    return raw


def _model_bytes(model_dir: Path, manifest: PackageManifest) -> bytes:
    model_file = manifest.model_file
    onnx_files = sorted(p.name for p in model_dir.glob("*.onnx"))
    if onnx_files != [model_file]:
        raise ArtifactError(
            f"{model_dir}: expected exactly one model file, {model_file!r} (named in {MANIFEST_FILE}), "
            f"found {onnx_files or 'none'}"
        )
    data = (model_dir / model_file).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest.model_sha256:
        raise ArtifactError(
            f"{model_dir / model_file}: sha256 {digest[:12]}… does not match {MANIFEST_FILE} "
            f"({manifest.model_sha256[:12]}…); the file is corrupt or from another package"
        )
    return data


def read_package(model_dir: Path) -> ModelPackage:
    """Read and check the package in ``model_dir``; raise ArtifactError saying what is wrong."""
    raw = _manifest(model_dir)
    try:
        manifest = PackageManifest.from_json(raw)
        spec = manifest.input
        datatype = V2_DATATYPES[spec.dtype]
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise ArtifactError(
            f"{model_dir / MANIFEST_FILE}: malformed manifest ({type(e).__name__}: {e}); "
            "rebuild it with `dvc repro package`"
        ) from e
    return ModelPackage(
        name=manifest.name,
        version=manifest.model_sha256[:VERSION_DIGITS],
        model_bytes=_model_bytes(model_dir, manifest),
        input=InputSpec(
            spec.name,
            spec.height,
            spec.width,
            spec.pixel_max,
            spec.max_batch_size,
            datatype,
            spec.channels,
            spec.decoding,
        ),
        output_name=manifest.output_name,
        labels=manifest.labels,
    )

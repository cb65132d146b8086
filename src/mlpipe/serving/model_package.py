"""Reading models/package/ (package.json + the ONNX file it names) for serving, with checks.

The manifest's format is mlpipe.contracts.manifest's; this module checks a package on disk against it,
without importing torch, so it can run in the slim serve image. An image model's package is a
`ModelPackage`, a table model's a `TablePackage` (its input: mlpipe.contracts.manifest.TableInput).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlpipe.contracts.data import image_array_shape
from mlpipe.contracts.images import ImageDecoding
from mlpipe.contracts.manifest import (
    MANIFEST_FILE,
    READABLE_FORMATS,
    PackageInput,
    PackageManifest,
    TableInput,
)
from mlpipe.contracts.table import TABLE_KIND
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
class Package:
    """A checked package: the model bytes and what the manifest says about them."""

    name: str
    version: str
    model_bytes: bytes
    output_name: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class ModelPackage(Package):
    """An image model's package."""

    input: InputSpec


@dataclass(frozen=True)
class TablePackage(Package):
    """A table model's package: one model input per column, named after it."""

    input: TableInput


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


def _image_spec(spec: PackageInput) -> InputSpec:
    return InputSpec(
        spec.name,
        spec.height,
        spec.width,
        spec.pixel_max,
        spec.max_batch_size,
        V2_DATATYPES[spec.dtype],
        spec.channels,
        spec.decoding,
    )


def read_any_package(model_dir: Path) -> ModelPackage | TablePackage:
    """Read and check the package in ``model_dir``, an image model's or a table model's; raise
    ArtifactError saying what is wrong."""
    raw = _manifest(model_dir)
    try:
        manifest = PackageManifest.from_json(raw)
        spec = manifest.input if isinstance(manifest.input, TableInput) else _image_spec(manifest.input)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise ArtifactError(
            f"{model_dir / MANIFEST_FILE}: malformed manifest ({type(e).__name__}: {e}); "
            "rebuild it with `dvc repro package`"
        ) from e
    common = Package(
        name=manifest.name,
        version=manifest.model_sha256[:VERSION_DIGITS],
        model_bytes=_model_bytes(model_dir, manifest),
        output_name=manifest.output_name,
        labels=manifest.labels,
    )
    if isinstance(spec, TableInput):
        return TablePackage(**vars(common), input=spec)
    return ModelPackage(**vars(common), input=spec)


def read_package(model_dir: Path) -> ModelPackage:
    """Read and check the image model's package in ``model_dir``; raise ArtifactError saying what
    is wrong (a table model's package among it)."""
    package = read_any_package(model_dir)
    if isinstance(package, TablePackage):
        raise ArtifactError(
            f"{model_dir}: a table model's package (its input is columns), where an image model's is needed"
        )
    return package


def read_table_package(model_dir: Path) -> TablePackage:
    """Read and check the table model's package in ``model_dir``; raise ArtifactError saying what
    is wrong (an image model's package among it)."""
    package = read_any_package(model_dir)
    if not isinstance(package, TablePackage):
        raise ArtifactError(
            f"{model_dir}: an image model's package (its input is {package.input.name!r}), where a "
            "table model's is needed"
        )
    return package


def is_table_package(model_dir: Path) -> bool:
    """Whether the package in ``model_dir`` holds a table model (ArtifactError if it is no package)."""
    manifest_input = _manifest(model_dir).get("input")
    return isinstance(manifest_input, dict) and manifest_input.get("kind") == TABLE_KIND

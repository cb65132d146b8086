"""The package manifest (models/package/package.json): the contract between the package stage
that writes a package and everything that reads one (the server, the model card, the registry,
the tests). No torch: the slim serve image reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlpipe.contracts.images import ImageDecoding
from mlpipe.contracts.preprocessing import AnyPreprocessing, preprocessing_from_dict
from mlpipe.contracts.table import NUMBER, TABLE_KIND, Column
from mlpipe.core.lineage import Inputs

PACKAGE_FORMAT = 2
# Every format a reader accepts. Format 1 recorded the architecture as {"family": "ConvNet",
# <model params>}; a rollback to a package made then must still be served.
READABLE_FORMATS = (1, 2)
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "package.json"
CARD_FILE = "MODEL_CARD.md"
PROFILE_FILE = "profile.json"  # the training data's drift profile (mlpipe.contracts.drift.Profile)
INPUT_NAME = "pixels"
OUTPUT_NAME = "probabilities"
# The model's input type: the prepared arrays' own (data.LabeledImages holds uint8 pixels). The
# exported graph takes it and casts and normalises inside, so every consumer sends raw pixels.
INPUT_DTYPE = "uint8"
# What an ONNX graph's input type means in NumPy. Packages made before INPUT_DTYPE took float32
# pixels (cast and normalised inside too): a rollback to one must still be served and costed.
ONNX_INPUT_DTYPES = {"tensor(uint8)": "uint8", "tensor(float)": "float32"}


@dataclass(frozen=True)
class PackageInput:
    """Images [N, *shape] of ``dtype`` pixels in 0..pixel_max, at most max_batch_size: ``shape``
    is [height, width] (grayscale) or [height, width, 3] (RGB, channels last). ``decoding`` says
    how an image file becomes such pixels, for a model trained on image files (else None)."""

    shape: tuple[int, ...]
    pixel_max: int
    max_batch_size: int
    name: str = INPUT_NAME
    dtype: str = INPUT_DTYPE
    decoding: ImageDecoding | None = None

    def __post_init__(self) -> None:
        if not (len(self.shape) == 2 or (len(self.shape) == 3 and self.shape[2] == 3)):
            raise ValueError(
                f"input shape must be [height, width] or [height, width, 3], got {list(self.shape)}"
            )

    @property
    def height(self) -> int:
        return self.shape[0]

    @property
    def width(self) -> int:
        return self.shape[1]

    @property
    def channels(self) -> int:
        return 1 if len(self.shape) == 2 else self.shape[2]

    def to_json(self) -> dict[str, Any]:
        raw: dict[str, Any] = {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "pixel_range": [0, self.pixel_max],
            "max_batch_size": self.max_batch_size,
        }
        if self.decoding is not None:
            raw["decoding"] = self.decoding.to_json()
        return raw

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> PackageInput:
        shape = tuple(int(n) for n in raw["shape"])
        decoding = raw.get("decoding")
        return cls(
            shape=shape,
            pixel_max=int(raw["pixel_range"][1]),
            max_batch_size=int(raw["max_batch_size"]),
            name=str(raw["name"]),
            dtype=str(raw["dtype"]),
            decoding=None if decoding is None else ImageDecoding.from_json(decoding),
        )


# A table model's input per column type: the ONNX element type and the V2 datatype of its values.
TABLE_INPUT_DTYPES = {NUMBER: "float32", "category": "str"}


@dataclass(frozen=True)
class TableInput:
    """A table model's input: one tensor [N] per column, named after it, in ``columns``' order:
    float32 for a number (NaN where missing), text for a category (mlpipe.contracts.table.model_inputs);
    at most max_batch_size rows."""

    columns: tuple[Column, ...]
    max_batch_size: int

    def __post_init__(self) -> None:
        if not self.columns:
            raise ValueError("a table model takes at least one column")

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": TABLE_KIND,
            "columns": [column.to_json() for column in self.columns],
            "max_batch_size": self.max_batch_size,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> TableInput:
        columns = tuple(Column.from_json(column) for column in raw["columns"])
        return cls(columns=columns, max_batch_size=int(raw["max_batch_size"]))


def input_from_json(raw: dict[str, Any]) -> PackageInput | TableInput:
    """A package's input: a table's (``kind: table``) or images'."""
    table = isinstance(raw, dict) and raw.get("kind") == TABLE_KIND
    return TableInput.from_json(raw) if table else PackageInput.from_json(raw)


@dataclass(frozen=True)
class Architecture:
    """The trained network, as the checkpoint rebuilds it: its class (``module.QualName``), the
    `model:` params it was built with, and its number of parameters (None when read from a
    format-1 package, which did not record it)."""

    class_name: str
    params: dict[str, Any]
    parameter_count: int | None

    def to_json(self) -> dict[str, Any]:
        count = self.parameter_count
        return {"class": self.class_name, "params": dict(self.params), "parameter_count": count}

    @classmethod
    def from_json(cls, raw: dict[str, Any], package_format: int) -> Architecture:
        if package_format == 1:
            params = {key: value for key, value in raw.items() if key != "family"}
            return cls(class_name=str(raw["family"]), params=params, parameter_count=None)
        count = raw["parameter_count"]
        return cls(str(raw["class"]), dict(raw["params"]), None if count is None else int(count))


@dataclass(frozen=True)
class PackageManifest:
    """Everything a server or a reader needs besides the model file."""

    name: str
    model_sha256: str
    input: PackageInput | TableInput
    labels: tuple[str, ...]
    preprocessing: AnyPreprocessing  # applied inside the graph; recorded for readers
    architecture: Architecture
    dataset: str
    # only what the bytes depend on: the commit and branch are MLflow tags (lineage.py)
    lineage: Inputs
    metrics: dict[str, float]
    output_name: str = OUTPUT_NAME
    model_file: str = MODEL_FILE

    @property
    def is_table(self) -> bool:
        return isinstance(self.input, TableInput)

    def to_json(self) -> dict[str, Any]:
        """package.json in the current PACKAGE_FORMAT, whichever format the manifest was read from."""
        return {
            "format": PACKAGE_FORMAT,
            "name": self.name,
            "model_file": self.model_file,
            "model_sha256": self.model_sha256,
            "input": self.input.to_json(),
            "output": {"name": self.output_name, "shape": [len(self.labels)]},
            "labels": list(self.labels),
            "preprocessing": self.preprocessing.to_dict(),
            "architecture": self.architecture.to_json(),
            "dataset": self.dataset,
            "lineage": self.lineage.to_dict(),
            "metrics": dict(self.metrics),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> PackageManifest:
        """Parse package.json of any of READABLE_FORMATS; KeyError, TypeError, ValueError or
        IndexError if it is malformed."""
        if not isinstance(raw, dict):
            raise TypeError(f"the manifest is a JSON {type(raw).__name__}, not an object")
        package_format = int(raw["format"])
        if package_format not in READABLE_FORMATS:
            raise ValueError(f"package format {package_format}, readable: {READABLE_FORMATS}")
        return cls(
            name=str(raw["name"]),
            model_sha256=str(raw["model_sha256"]),
            input=input_from_json(raw["input"]),
            labels=tuple(str(label) for label in raw["labels"]),
            preprocessing=preprocessing_from_dict(raw["preprocessing"]),
            architecture=Architecture.from_json(raw["architecture"], package_format),
            dataset=str(raw["dataset"]),
            lineage=Inputs(**{key: str(value) for key, value in raw["lineage"].items()}),
            metrics=dict(raw["metrics"]),
            output_name=str(raw["output"]["name"]),
            model_file=str(raw["model_file"]),
        )

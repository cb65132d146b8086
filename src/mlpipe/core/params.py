"""The params.yaml schema: validated into typed objects before a stage touches anything."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from mlpipe.core.errors import MlpipeError, ParamsError
from mlpipe.core.paths import NO_LOCAL_SOURCE, PARAMS_FILE

Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
Score = Annotated[float, Field(ge=0.0, le=1.0)]
ModelT = TypeVar("ModelT", bound=BaseModel)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# The datasets whose images are grayscale whatever their files hold.
GRAYSCALE_DATASETS = ("digits", "fashion-mnist", "idx")
# The datasets of tables: rows of named columns, one of them the label (mlpipe.contracts.table).
TABLE_DATASETS = ("penguins", "table")
# The bundled table (palmerpenguins' CSV) and its label column.
PENGUINS_TARGET = "species"
ColumnType = Literal["number", "category"]
# The keys of a table dataset: left out of an image dataset's params (and so of its digest).
TABLE_KEYS = ("target", "features", "columns")
ColumnName = Annotated[str, Field(min_length=1)]


class DataParams(_Section):
    """Which dataset to prepare and how to split it."""

    dataset: Literal["digits", "fashion-mnist", "idx", "imagefolder", "penguins", "table"] = "digits"
    # The dataset's directory, prepare's only data dep: fashion-mnist: the four IDX files; idx:
    # pairs of IDX files; imagefolder: class_name/*.png; kept under data/raw and `dvc add`-ed.
    # None: no files in the project (digits; Fashion-MNIST downloaded), spelt data/raw/none in
    # params.yaml for DVC.
    source: str | None = None
    # [height, width] to resize imagefolder images to; null requires them all to share one size.
    image_size: (
        Annotated[list[Annotated[int, Field(ge=4, le=512)]], Field(min_length=2, max_length=2)] | None
    ) = None
    # 1 (grayscale) or 3 (RGB); None: what the dataset has (an image folder: 3 if any image is colour).
    channels: Literal[1, 3] | None = None
    # idx only: the class names, one per label value (label i is classes[i]).
    classes: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=2)] | None = None
    # table datasets only: the label column; the feature columns (None: every other column); the
    # type of any column whose inferred one is wrong (None: every type inferred by prepare).
    target: ColumnName | None = None
    features: Annotated[list[ColumnName], Field(min_length=1)] | None = None
    columns: dict[ColumnName, ColumnType] | None = None
    val_fraction: Fraction = 0.1
    test_fraction: Fraction = 0.2
    max_samples: Annotated[int, Field(ge=10)] | None = None
    seed: Seed = 42

    @field_validator("source", mode="before")
    @classmethod
    def _no_local_source(cls, value: object) -> object:
        # dvc.yaml's ${data.source} must name a path that exists, so params.yaml cannot say null
        if value is None:
            raise ValueError(f"null is no path for DVC; write {NO_LOCAL_SOURCE} for no files in the project")
        if isinstance(value, str) and Path(value) == NO_LOCAL_SOURCE:
            return None
        return value

    @model_validator(mode="after")
    def _check(self) -> DataParams:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must leave at least 10% for training")
        if self.dataset == "imagefolder" and not self.source:
            raise ValueError("source is required for dataset 'imagefolder' (a class_name/*.png tree)")
        if self.dataset == "idx" and not self.source:
            raise ValueError("source is required for dataset 'idx' (a directory of IDX file pairs)")
        if self.dataset == "idx" and self.classes is None:
            raise ValueError("classes is required for dataset 'idx': one name per label, e.g. [cat, dog]")
        if self.classes is not None and self.dataset != "idx":
            raise ValueError("classes applies to dataset 'idx' only (the others name their classes)")
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be distinct; got {self.classes}")
        if self.channels == 3 and self.dataset in GRAYSCALE_DATASETS:
            raise ValueError(
                f"channels: 3 needs colour images (dataset 'imagefolder'); {self.dataset} is grayscale"
            )
        if self.dataset == "digits" and self.source:
            raise ValueError(f"source of dataset 'digits' is {NO_LOCAL_SOURCE} (scikit-learn ships it)")
        if self.image_size is not None and self.dataset != "imagefolder":
            raise ValueError("image_size applies to dataset 'imagefolder' only")
        if self.is_table:
            self._check_table()
        else:
            for key in TABLE_KEYS:
                if getattr(self, key) is not None:
                    raise ValueError(f"{key} applies to table datasets only ({', '.join(TABLE_DATASETS)})")
        return self

    def _check_table(self) -> None:
        if self.channels is not None:
            raise ValueError(f"channels applies to image datasets; {self.dataset} is a table")
        if self.dataset == "table" and not self.source:
            raise ValueError("source is required for dataset 'table' (a .csv or .parquet file)")
        if self.dataset == "table" and self.target is None:
            raise ValueError("target is required for dataset 'table': the name of the label column")
        if self.dataset == "penguins" and self.source:
            raise ValueError(f"source of dataset 'penguins' is {NO_LOCAL_SOURCE} (palmerpenguins ships it)")
        target = self.label_column
        if self.features is not None:
            if len(set(self.features)) != len(self.features):
                raise ValueError(f"features must be distinct; got {self.features}")
            if target in self.features:
                raise ValueError(f"features must not hold the target column {target!r}")
        if self.columns is not None and target in self.columns:
            raise ValueError(f"columns: the target {target!r} is the label, not a typed feature")

    @property
    def is_table(self) -> bool:
        """Whether the dataset is a table (else images)."""
        return self.dataset in TABLE_DATASETS

    @property
    def label_column(self) -> str | None:
        """A table's label column: ``target``, or the bundled table's own; None for images."""
        if not self.is_table:
            return None
        return self.target or (PENGUINS_TARGET if self.dataset == "penguins" else None)

    @model_serializer(mode="wrap")
    def _serialise(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> dict[str, Any]:
        # An image dataset's params dump (and so its digest, in every package) without the keys
        # that only tables have.
        dumped = handler(self)
        if not self.is_table:
            for key in TABLE_KEYS:
                dumped.pop(key, None)
        return dumped


class ModelParams(_Section):
    """The network's shape. Images: a CNN of `depth` conv blocks starting at `width` channels,
    doubling each block, and a `hidden`-unit dense layer. Tables: an MLP of `depth` hidden layers
    of `hidden` units (`width` is null: it has no conv blocks)."""

    width: Annotated[int, Field(ge=1, le=512)] | None = 32
    depth: Annotated[int, Field(ge=1, le=6)] = 2
    hidden: Annotated[int, Field(ge=1, le=4096)] = 128
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.2
    batch_norm: bool = True


class TrainParams(_Section):
    """Optimisation settings; `device: auto` picks CUDA when present, else CPU."""

    epochs: Annotated[int, Field(ge=1, le=10_000)] = 30
    batch_size: Annotated[int, Field(ge=1, le=65_536)] = 64
    lr: Annotated[float, Field(gt=0.0, le=10.0)] = 0.003
    # share of the steps over which the one-cycle schedule warms up to `lr` before annealing
    warmup_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.15
    weight_decay: Annotated[float, Field(ge=0.0, le=1.0)] = 1e-4
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    seed: Seed = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True
    compile: bool = False
    # CUDA: deterministic kernels (the same GPU model and software repeat a run's bytes)
    deterministic: bool = True
    # portable: the same bytes on any x86-64 CPU with AVX2 (src/mlpipe/core/numerics.py); native: fastest
    numerics: Literal["portable", "native"] = "portable"
    # processes on this node; > 1 runs data-parallel under torchrun (batch_size stays global)
    nproc_per_node: Annotated[int, Field(ge=1, le=64)] = 1


class EvaluateParams(_Section):
    """Evaluation settings."""

    batch_size: Annotated[int, Field(ge=1, le=65_536)] = 1024
    misclassified_examples: Annotated[int, Field(ge=0, le=400)] = 36


class PackageParams(_Section):
    """How the serving bundle is built and registered."""

    model_name: Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")] = "mlpipe-classifier"
    opset: Annotated[int, Field(ge=17, le=23)] = 18
    max_batch_size: Annotated[int, Field(ge=1, le=65_536)] = 256
    register_model: bool = True


class GateParams(_Section):
    """What `mlpipe gate` requires of a candidate before it may become the `champion`."""

    min_test_accuracy: Score = 0.95
    min_test_macro_f1: Score = 0.95
    # largest drop in test_accuracy allowed against the registered champion
    max_regression: Score = 0.005
    # how a drop against the champion is judged: `threshold` fails any drop above
    # max_regression; `significant` fails only a drop that is significant at the 5 % level
    # (McNemar's exact test on both models' test predictions; docs/ci.md)
    regression_test: Literal["threshold", "significant"] = "threshold"


class Params(_Section):
    """All of params.yaml."""

    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    package: PackageParams = PackageParams()
    gate: GateParams = GateParams()

    @model_validator(mode="after")
    def _check_model_for_data(self) -> Params:
        table = self.data.is_table
        if table and "width" in self.model.model_fields_set and self.model.width is not None:
            raise ValueError(
                f"model.width applies to image models (the conv blocks' channels); dataset "
                f"{self.data.dataset!r} is a table, whose MLP is model.depth layers of model.hidden "
                "units: set model.width to null"
            )
        if not table and self.model.width is None:
            raise ValueError("model.width: an image model needs its first conv block's channels (e.g. 32)")
        return self

    def digest(self, *sections: str) -> str:
        """SHA-256 of the named sections (all when none are named), stable across runs."""
        dumped = self.model_dump(mode="json")
        chosen = {name: dumped[name] for name in (sections or tuple(dumped))}
        canonical = json.dumps(chosen, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


class _Loader(yaml.SafeLoader):
    """YAML 1.1 plus YAML 1.2's floats: `dvc exp run -S train.lr=1e-5` writes 1e-05, which
    PyYAML alone reads as a string."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _describe(error: ValidationError, path: Path, union_tags: Collection[str]) -> str:
    problems = []
    for item in error.errors():
        # a discriminated union adds the chosen tag to the location: params.train.lr.float.low
        key = ".".join(str(part) for part in item["loc"] if part not in union_tags) or "(top level)"
        if item["type"] == "extra_forbidden":
            problems.append(f"{key}: unknown key")
        elif item["type"] == "missing":
            problems.append(f"{key}: required key is missing")
        else:
            message = item["msg"].removeprefix("Value error, ")
            got = "" if isinstance(item["input"], dict) else f" (got {item['input']!r})"
            problems.append(f"{key}: {message}{got}")
    return f"{path}: " + "; ".join(problems)


def read_yaml(path: Path, error: type[MlpipeError]) -> object:
    """The YAML document in a config file (YAML 1.2's floats too); ``error`` if it is missing or
    not YAML."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise error(f"{path}: not found; run from the project root (where dvc.yaml is)") from e
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML: {e}") from e


def validate_config(
    model: type[ModelT],
    raw: object,
    source: Path,
    error: type[MlpipeError],
    expected: str = "a mapping",
    union_tags: Collection[str] = (),
) -> ModelT:
    """A loaded config file validated into ``model``; else ``error`` naming each bad key (the
    tags of ``model``'s discriminated unions left out of the key)."""
    if not isinstance(raw, dict):
        raise error(f"{source}: expected {expected}, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise error(_describe(e, source, union_tags)) from e


def parse_params(raw: object, source: Path = PARAMS_FILE) -> Params:
    """Validate an already-loaded params mapping; raise ParamsError naming each bad key."""
    raw = {} if raw is None else raw
    return validate_config(Params, raw, source, ParamsError, expected="a mapping of sections")


def load_params(path: Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml."""
    return parse_params(read_yaml(path, ParamsError), path)

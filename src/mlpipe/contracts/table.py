"""Tables: labelled rows of named columns, the prepared table's typed schema, and one way of
turning raw values into what the model takes.

A column is a ``number`` (float64, NaN where a value is missing) or a ``category`` (text, None
where missing). prepare writes each split as CSV (``data/prepared/<split>.csv``: the feature
columns, then the label column; an empty field is a missing value) and ``schema.json`` with each
column's type and what the training split says about it: a number's mean, standard deviation,
range and missing count, a category's levels. The preprocessing learnt from those (imputation,
scaling, one-hot encoding: mlpipe.contracts.preprocessing.TablePreprocessing) is carried inside
the exported model, whose inputs are the raw columns (`model_inputs`). NumPy only: the serve
image reads it.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mlpipe.core import atomic, paths
from mlpipe.core.errors import ArtifactError, DataError

TABLE_KIND = "table"
SCHEMA_VERSION = 1
NUMBER: Literal["number"] = "number"
CATEGORY: Literal["category"] = "category"
ColumnType = Literal["number", "category"]
# What a CSV field holding no value says (pandas' and R's usual spellings); an empty field too.
MISSING_TEXT = frozenset({"", "NA", "N/A", "NaN", "nan", "NULL", "null", "None"})
# A category with more levels than this in the training split is an identifier, not a feature.
MAX_LEVELS = 1000
# How a missing category reaches the model: the empty text, which no level is (`read_column`).
MISSING_CATEGORY = ""


def split_file(split: str, root: Path = paths.PREPARED_DIR) -> Path:
    """Path of a prepared table split."""
    return root / f"{split}.csv"


@dataclass(frozen=True)
class Column:
    """One feature column and what the training split says about it.

    A number has the training values' ``mean`` and ``std`` (population; 1.0 for a constant
    column), ``minimum`` and ``maximum``; a category its ``levels`` (sorted). ``missing`` counts
    the training rows without a value.
    """

    name: str
    type: ColumnType
    missing: int = 0
    mean: float = 0.0
    std: float = 1.0
    minimum: float = 0.0
    maximum: float = 0.0
    levels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.type not in (NUMBER, CATEGORY):
            raise ValueError(
                f"column {self.name!r}: type must be {NUMBER!r} or {CATEGORY!r}, got {self.type!r}"
            )
        if self.type == NUMBER and not (self.std > 0 and math.isfinite(self.mean)):
            raise ValueError(f"column {self.name!r}: needs a finite mean and std > 0")
        if self.type == CATEGORY and (not self.levels or MISSING_CATEGORY in self.levels):
            raise ValueError(f"column {self.name!r}: a category needs levels, none of them empty")

    @property
    def is_number(self) -> bool:
        return self.type == NUMBER

    def to_json(self) -> dict[str, Any]:
        raw: dict[str, Any] = {"name": self.name, "type": self.type, "missing": self.missing}
        if self.is_number:
            raw |= {"mean": self.mean, "std": self.std, "range": [self.minimum, self.maximum]}
        else:
            raw["levels"] = list(self.levels)
        return raw

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Column:
        if raw["type"] == NUMBER:
            low, high = raw["range"]
            return cls(
                str(raw["name"]), NUMBER, int(raw["missing"]), float(raw["mean"]), float(raw["std"]),
                float(low), float(high),
            )  # fmt: skip
        levels = tuple(str(level) for level in raw["levels"])
        return cls(str(raw["name"]), raw["type"], int(raw["missing"]), levels=levels)


@dataclass(frozen=True)
class TableSchema:
    """What prepare promises about a prepared table (data/prepared/schema.json)."""

    dataset: str
    target: str
    columns: tuple[Column, ...]
    classes: tuple[str, ...]
    split_counts: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)

    def column(self, name: str) -> Column:
        return next(column for column in self.columns if column.name == name)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": SCHEMA_VERSION,
            "kind": TABLE_KIND,
            "dataset": self.dataset,
            "target": self.target,
            "classes": list(self.classes),
            "columns": [column.to_json() for column in self.columns],
            "splits": {
                name: {"count": sum(counts.values()), "class_counts": counts}
                for name, counts in self.split_counts.items()
            },
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> TableSchema:
        return cls(
            dataset=str(raw["dataset"]),
            target=str(raw["target"]),
            columns=tuple(Column.from_json(column) for column in raw["columns"]),
            classes=tuple(str(name) for name in raw["classes"]),
            split_counts={name: dict(s["class_counts"]) for name, s in raw.get("splits", {}).items()},
        )


@dataclass(frozen=True)
class Table:
    """Rows of feature columns with integer labels: ``features`` maps each column's name to its
    values [N] (float64 with NaN for a number, object str-or-None for a category); ``labels`` is
    int64 [N] indexing ``classes``."""

    features: dict[str, np.ndarray]
    labels: np.ndarray
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        for name, values in self.features.items():
            if values.shape != self.labels.shape:
                raise ValueError(f"column {name!r} has {values.shape} values for {self.labels.shape} labels")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: np.ndarray) -> Table:
        """The rows at ``index``, in that order."""
        return Table({n: v[index] for n, v in self.features.items()}, self.labels[index], self.classes)

    def records(self) -> list[dict[str, float | str | None]]:
        """The rows as records, column -> value (None where missing): what a client sends."""
        columns = {name: [_plain(value) for value in values] for name, values in self.features.items()}
        return [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)]


def _plain(value: Any) -> float | str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value if isinstance(value, str) else float(value)


def is_missing(text: str) -> bool:
    """Whether a CSV field holds no value."""
    return text.strip() in MISSING_TEXT


def parse_numbers(name: str, texts: Iterable[str | None]) -> np.ndarray:
    """A number column's text fields as float64 [N], NaN where missing; DataError naming the
    column and the first field that is no number."""
    values = []
    for row, text in enumerate(texts):
        if text is None or is_missing(text):
            values.append(math.nan)
            continue
        try:
            value = float(text)
        except ValueError:
            value = math.nan
            bad = True
        else:
            bad = not math.isfinite(value)
        if bad:
            raise DataError(
                f"column {name!r}, row {row + 1} (after the header): {text!r} is not a number (the "
                "column's type is number)"
            )
        values.append(value)
    return np.asarray(values, dtype=np.float64)


def parse_categories(texts: Iterable[str | None]) -> np.ndarray:
    """A category column's text fields as object [N], None where missing."""
    return np.asarray([None if t is None or is_missing(t) else t.strip() for t in texts] or [], dtype=object)


def infer_type(texts: Sequence[str | None]) -> ColumnType:
    """``number`` if every present value reads as a finite number, else ``category``."""
    for text in texts:
        if text is None or is_missing(text):
            continue
        try:
            if not math.isfinite(float(text)):
                return CATEGORY
        except ValueError:
            return CATEGORY
    return NUMBER


def describe(name: str, kind: ColumnType, values: np.ndarray) -> Column:
    """A column's schema entry from its training values: exact statistics (math.fsum), so they
    do not depend on the CPU's vector width; DataError if the split holds no value of it."""
    present = [v for v in values.tolist() if v is not None and not (isinstance(v, float) and math.isnan(v))]
    missing = len(values) - len(present)
    if not present:
        raise DataError(f"column {name!r} has no value in the training split; drop it from data.features")
    if kind == CATEGORY:
        levels = tuple(sorted(set(present)))
        if len(levels) > MAX_LEVELS:
            raise DataError(
                f"column {name!r} has {len(levels)} distinct values in the training split (at most "
                f"{MAX_LEVELS}): an identifier, not a category; drop it from data.features"
            )
        return Column(name, CATEGORY, missing, levels=levels)
    mean = math.fsum(present) / len(present)
    variance = math.fsum((v - mean) ** 2 for v in present) / len(present)
    std = math.sqrt(variance) if variance > 0 else 1.0
    return Column(name, NUMBER, missing, round(mean, 9), round(std, 9), min(present), max(present))


def _number_text(value: float) -> str:
    if math.isnan(value):
        return ""
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def write_split(root: Path, split: str, table: Table, schema: TableSchema) -> None:
    """Write one split as CSV: the feature columns, then the label; deterministic bytes."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*schema.names, schema.target])
    texts = []
    for column in schema.columns:
        values = table.features[column.name]
        if column.is_number:
            texts.append([_number_text(float(v)) for v in values])
        else:
            texts.append(["" if v is None else str(v) for v in values])
    labels = [table.classes[i] for i in table.labels]
    writer.writerows(zip(*texts, labels, strict=True))
    atomic.write_text(split_file(split, root), buffer.getvalue())


def read_schema(root: Path = paths.PREPARED_DIR) -> TableSchema:
    """Read schema.json of a prepared table."""
    path = root / paths.SCHEMA_FILE.name
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("kind") != TABLE_KIND or raw.get("version") != SCHEMA_VERSION:
            raise ArtifactError(
                f"{path}: not a version-{SCHEMA_VERSION} table schema; rerun `dvc repro prepare`"
            )
        return TableSchema.from_json(raw)
    except FileNotFoundError as e:
        raise ArtifactError(f"{path}: not found; run `dvc repro prepare` first") from e
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, StopIteration) as e:
        raise ArtifactError(f"{path}: malformed schema ({e}); rerun `dvc repro prepare`") from e


def read_split(split: str, root: Path = paths.PREPARED_DIR, schema: TableSchema | None = None) -> Table:
    """Load one prepared table split and check it against the schema."""
    schema = schema or read_schema(root)
    path = split_file(split, root)
    try:
        rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
    except FileNotFoundError as e:
        raise ArtifactError(f"{path}: not found; run `dvc repro prepare` first") from e
    header = [*schema.names, schema.target]
    if not rows or rows[0] != header:
        raise ArtifactError(f"{path}: expected the columns {header}; rerun `dvc repro prepare`")
    body = rows[1:]
    if any(len(row) != len(header) for row in body):
        raise ArtifactError(f"{path}: rows of unequal length; rerun `dvc repro prepare`")
    columns = list(zip(*body, strict=True)) if body else [() for _ in header]
    index = {name: i for i, name in enumerate(schema.classes)}
    try:
        labels = np.asarray([index[label] for label in columns[-1]], dtype=np.int64)
        features = {
            column.name: parse_numbers(column.name, texts) if column.is_number else parse_categories(texts)
            for column, texts in zip(schema.columns, columns[:-1], strict=True)
        }
    except (KeyError, DataError) as e:
        raise ArtifactError(f"{path}: {e} does not fit {paths.SCHEMA_FILE}; rerun `dvc repro prepare`") from e
    return Table(features, labels, schema.classes)


def codes(values: np.ndarray, column: Column) -> np.ndarray:
    """A category's values as level indices, int64 [N]: -1 for a missing or unknown level."""
    index = {level: i for i, level in enumerate(column.levels)}
    return np.asarray(
        [index.get(v, -1) if isinstance(v, str) else -1 for v in values.tolist()], dtype=np.int64
    )


def model_inputs(columns: Sequence[Column], features: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The exported model's inputs, one per column: float32 [N] (NaN where missing) for a number,
    text [N] (MISSING_CATEGORY where missing) for a category. ``features`` maps each column to its
    values (arrays, lists, or pandas columns: None or NaN where missing)."""
    inputs = {}
    for column in columns:
        values = np.asarray(features[column.name], dtype=object)
        if column.is_number:
            numbers = [math.nan if v is None else v for v in values.tolist()]
            inputs[column.name] = np.asarray(numbers, dtype=np.float64).astype(np.float32)
        else:
            inputs[column.name] = np.asarray(
                [v if isinstance(v, str) else MISSING_CATEGORY for v in values.tolist()], dtype=object
            )
    return inputs

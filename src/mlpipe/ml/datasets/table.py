"""Read a table dataset: a CSV or Parquet file (`table`), or palmerpenguins' bundled CSV
(`penguins`), as each column's text fields, to be typed and split by `prepare`."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

from mlpipe.core.errors import DataError, ParamsError
from mlpipe.core.params import DataParams

SUFFIXES = (".csv", ".parquet")


@dataclass(frozen=True)
class RawTable:
    """A file's columns, in its order, each as text fields (None where a Parquet value is null)."""

    source: str
    columns: dict[str, list[str | None]]

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()), []))


def penguins_csv() -> Path:
    """palmerpenguins' CSV (344 penguins, 3 species, NA gaps); no network needed."""
    from importlib.resources import files

    return Path(str(files("palmerpenguins") / "data" / "penguins.csv"))


def _read_csv(path: Path) -> RawTable:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e}); save the CSV as UTF-8") from e
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or not rows[0]:
        raise DataError(f"{path}: empty; a CSV with a header row and one row per example")
    header = [name.strip() for name in rows[0]]
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated or "" in header:
        raise DataError(
            f"{path}: the header needs distinct, non-empty column names; check {duplicated or ['']}"
        )
    body = [row for row in rows[1:] if row]
    for number, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(f"{path}, line {number}: {len(row)} fields, the header has {len(header)}")
    columns: dict[str, list[str | None]] = {name: [row[i] for row in body] for i, name in enumerate(header)}
    return RawTable(str(path), columns)


def _text(value: object) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _read_parquet(path: Path) -> RawTable:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises its own error types for files it cannot read
        raise DataError(f"{path}: not a readable Parquet file ({e})") from e
    return RawTable(
        str(path), {name: [_text(v) for v in table.column(name).to_pylist()] for name in table.column_names}
    )


def load_raw_table(params: DataParams) -> RawTable:
    """The configured table, unsplit and untyped."""
    if params.dataset == "penguins":
        return _read_csv(penguins_csv())
    if params.source is None:
        raise ParamsError("data.source: required for dataset 'table' (a .csv or .parquet file)")
    path = Path(params.source)
    if not path.is_file():
        raise DataError(
            f"data.source {path}: no such file; a .csv or .parquet file (kept under data/raw, dvc add-ed)"
        )
    if path.suffix.lower() not in SUFFIXES:
        raise DataError(f"data.source {path}: a table is a {' or '.join(SUFFIXES)} file")
    return _read_parquet(path) if path.suffix.lower() == ".parquet" else _read_csv(path)

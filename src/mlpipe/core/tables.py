"""The pipeline's small tables: reports/metrics.json and the CSV files (history, per-class
scores, predictions), each written and read one way."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mlpipe.core import paths
from mlpipe.core.errors import ArtifactError


def to_csv(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A CSV table with ``header``, "\\n" line ends, values written with ``str``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def rows(text: str | None) -> list[dict[str, str]]:
    """A CSV table's rows keyed by its header; empty for no text."""
    return list(csv.DictReader(io.StringIO(text))) if text else []


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file the evaluate stage writes; an error says how to produce it."""
    try:
        return rows(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ArtifactError(f"{path}: not found; run `dvc repro` (or `dvc pull`) first") from e
    except UnicodeDecodeError as e:
        raise ArtifactError(f"{path}: not UTF-8 text ({e}); rerun `dvc repro evaluate`") from e


def read_json(path: Path, missing: str, invalid: str) -> Any:
    """A JSON file's value; a missing or invalid file is an ArtifactError ending in the hint
    ``missing`` or ``invalid`` (how to fix it)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ArtifactError(f"{path}: not found; {missing}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: not valid JSON ({e}); {invalid}") from e


def read_metrics(path: Path = paths.METRICS_FILE, required: Iterable[str] = ()) -> dict[str, float]:
    """The test metrics evaluate wrote, each of ``required`` a number; errors name the file and
    how to produce it."""
    rerun = "rerun `dvc repro evaluate`"
    metrics = read_json(path, "run `dvc repro` (or `dvc pull`) first", rerun)
    if not isinstance(metrics, dict):
        raise ArtifactError(f"{path}: not a JSON object of metrics; {rerun}")
    missing = [key for key in required if not isinstance(metrics.get(key), int | float)]
    if missing:
        raise ArtifactError(f"{path}: no numeric {', '.join(missing)}; {rerun}")
    return metrics

"""`mlpipe report`: a markdown report for reviewers comparing the workspace with a git revision.

It holds the verdict (headline metric old → new and the gate's decision), DVC's metrics and
params diffs, and PNG figures old vs new (training curves, confusion matrices) in a folder
beside the report, linked by relative path. The revision's files are read with `git show`:
the metrics and plot files are small and committed (`cache: false` in dvc.yaml).
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlpipe import atomic, gate, paths, plots
from mlpipe.errors import MlpipeError
from mlpipe.params import load_params

WORKSPACE = "workspace"
CURVES_PNG = "training_curves.png"


class ReportError(MlpipeError):
    """The report cannot be built: unknown revision, or DVC failed to diff."""


@dataclass(frozen=True)
class Side:
    """One side of the comparison: a label and its pipeline results (None where absent)."""

    label: str
    metrics: dict[str, float] | None
    history: str | None
    predictions: str | None
    per_class: str | None


def _command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=300)


def _resolve(rev: str) -> str:
    """The commit ``rev`` names; an error says how to make it available."""
    result = _command("git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if result.returncode != 0:
        raise ReportError(
            f"unknown git revision {rev!r}; fetch it first (e.g. `git fetch origin main`) "
            "and pass it with --base"
        )
    return result.stdout.strip()


def _git_file(rev: str, path: Path) -> str | None:
    """A file's text at ``rev`` (relative to the current directory); None if it is not there."""
    result = _command("git", "show", f"{rev}:./{path.as_posix()}")
    return result.stdout if result.returncode == 0 else None


def _dvc_diff(kind: str, rev: str) -> str:
    """`dvc <kind> diff --md <rev>`: a markdown table, or "" when nothing changed."""
    result = _command(sys.executable, "-m", "dvc", kind, "diff", "--md", rev)
    if result.returncode != 0:
        raise ReportError(f"`dvc {kind} diff --md {rev}` failed: {result.stderr.strip()}")
    return result.stdout.strip()


def _workspace_file(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.exists() else None


def base_side(rev: str) -> Side:
    """The pipeline results committed at ``rev``."""
    metrics_text = _git_file(rev, paths.METRICS_FILE)
    try:
        metrics = json.loads(metrics_text) if metrics_text else None
    except json.JSONDecodeError as e:
        raise ReportError(f"{paths.METRICS_FILE} at {rev}: not valid JSON ({e})") from e
    return Side(
        label=rev,
        metrics=metrics,
        history=_git_file(rev, paths.TRAIN_HISTORY_FILE),
        predictions=_git_file(rev, paths.PREDICTIONS_FILE),
        per_class=_git_file(rev, paths.PER_CLASS_FILE),
    )


def workspace_side(metrics: dict[str, float]) -> Side:
    """The pipeline results in the working tree."""
    return Side(
        label=WORKSPACE,
        metrics=metrics,
        history=_workspace_file(paths.TRAIN_HISTORY_FILE),
        predictions=_workspace_file(paths.PREDICTIONS_FILE),
        per_class=_workspace_file(paths.PER_CLASS_FILE),
    )


def _rows(table: str | None) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(table))) if table else []


def _columns(table: str) -> dict[str, list[float]]:
    """A numeric CSV as columns."""
    rows = _rows(table)
    return {name: [float(row[name]) for row in rows] for name in (rows[0] if rows else {})}


def class_order(sides: Sequence[Side]) -> list[str]:
    """Class names in schema order (per_class.csv), then any others the predictions name."""
    order: dict[str, None] = {}
    for side in sides:
        order.update(dict.fromkeys(row["class"] for row in _rows(side.per_class)))
    for side in sides:
        for row in _rows(side.predictions):
            order.update(dict.fromkeys((row["actual"], row["predicted"])))
    return list(order)


def confusion(predictions: str, classes: Sequence[str]) -> np.ndarray:
    """Counts per (actual, predicted) class from predictions.csv."""
    index = {name: i for i, name in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for row in _rows(predictions):
        matrix[index[row["actual"]], index[row["predicted"]]] += 1
    return matrix


def _headline(metrics: Mapping[str, float] | None) -> float | None:
    value = (metrics or {}).get(gate.HEADLINE)
    return float(value) if isinstance(value, int | float) else None


def verdict(base: Side, workspace: Side, decision: gate.Decision) -> str:
    """One line: the headline metric old → new with its change, and the gate's decision."""
    new, old = _headline(workspace.metrics), _headline(base.metrics)
    if old is None:
        change = (
            f"{gate.HEADLINE} {new:.4f} (no baseline: `{base.label}` has no "
            f"{paths.METRICS_FILE} yet; first merge request?)"
        )
    else:
        change = f"{gate.HEADLINE} {old:.4f} → {new:.4f} ({new - old:+.4f})"
    outcome = "✅ passes" if decision.passed else "❌ fails"
    return f"**Verdict:** {change} · gate {outcome}"


def _gate_lines(decision: gate.Decision) -> list[str]:
    lines = [f"- {'✅' if check.passed else '❌'} {check.describe()}" for check in decision.checks]
    if decision.champion is None:
        lines.append(f"- ➖ no `{gate.CHAMPION}` in the model registry: nothing to compare with")
    return lines


def _curves(folder: Path, link: str, sides: Sequence[Side]) -> list[str]:
    """Both sides' training curves in one figure; the markdown that shows it from ``link``."""
    histories = {side.label: _columns(side.history) for side in sides if side.history}
    if not histories:
        return [f"No {paths.TRAIN_HISTORY_FILE} on either side."]
    plots.curves_png(folder / CURVES_PNG, histories, "training")
    return [f"![training curves, {' vs '.join(histories)}]({link}/{CURVES_PNG})"]


def _confusion_matrices(folder: Path, link: str, sides: Mapping[str, Side]) -> list[str]:
    """One confusion matrix per side (``sides`` maps a file name part to it), side by side."""
    classes = class_order(list(sides.values()))
    header, images = [], []
    for name, side in sides.items():
        if side.predictions is None:
            continue
        file = f"confusion_{name}.png"
        accuracy = _headline(side.metrics)
        title = side.label + (f" (accuracy {accuracy:.4f})" if accuracy is not None else "")
        plots.confusion_matrix_png(folder / file, confusion(side.predictions, classes), classes, title)
        header.append(side.label)
        images.append(f"![confusion matrix, {side.label}]({link}/{file})")
    if not header:
        return [f"No {paths.PREDICTIONS_FILE} on either side."]
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), "| " + " | ".join(images) + " |"]


def write_report(base: str, out: Path) -> str:
    """Write the report comparing the workspace with revision ``base`` to ``out``; return the verdict.

    The figures go to a folder named after ``out`` (reports/report.md -> reports/report/).
    """
    if out.suffix != ".md":
        raise ReportError(f"--out {out}: the report is markdown; name it *.md")
    params = load_params()
    base_commit = _resolve(base)
    head = _command("git", "rev-parse", "--short", "HEAD").stdout.strip() or "?"
    metrics = gate.read_metrics()
    old, new = base_side(base), workspace_side(metrics)
    decision = gate.evaluate(params, metrics, gate.registry())
    metrics_diff, params_diff = _dvc_diff("metrics", base), _dvc_diff("params", base)
    summary = verdict(old, new, decision)

    folder = out.with_suffix("")
    with atomic.replace_dir(folder) as staging:
        curves = _curves(staging, folder.name, [old, new])
        matrices = _confusion_matrices(staging, folder.name, {"base": old, WORKSPACE: new})
    lines = [
        "# Model report",
        "",
        f"The {WORKSPACE} at `{head}` compared with `{base}` (`{base_commit[:7]}`).",
        "",
        summary,
        "",
        *_gate_lines(decision),
        "",
        "## Metrics",
        "",
        metrics_diff or "No metric changed.",
        "",
        "## Params",
        "",
        params_diff or "No param changed.",
        "",
        "## Training curves",
        "",
        *curves,
        "",
        "## Confusion matrix (test split)",
        "",
        *matrices,
        "",
    ]
    atomic.write_text(out, "\n".join(lines))
    return summary

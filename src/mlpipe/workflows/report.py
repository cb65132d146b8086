"""`mlpipe report`: a markdown report for reviewers comparing the workspace with a git revision.

It holds the verdict (headline metric old → new and the gate's decision), whether the change
is signal or noise (mlpipe.contracts.compare on both sides' test predictions), DVC's metrics and params
diffs, per-class changes, the examples that changed verdict (images in grids, a table's rows in
markdown tables), what the model costs to serve
(mlpipe.workflows.cost, both packages timed in this run), and PNG figures old vs new (training curves,
confusion matrices) in a folder beside the report, linked by relative path. The revision's
files are read with `git show`: the metrics and plot files are small and committed
(`cache: false` in dvc.yaml); its package comes from DVC (the cache, else the remote).

`Report.build` gathers all of it once; `Report.write` draws the figures and writes the markdown,
and `Report.render(figures=None)` is the same text with each figure named in words, for
`mlpipe retrain`'s merge request description, where relative image links cannot resolve.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import yaml

from mlpipe.contracts import compare
from mlpipe.contracts.data import read_any_schema, read_examples
from mlpipe.contracts.table import Table, TableSchema
from mlpipe.core import atomic, paths, tables, vcs
from mlpipe.core.errors import MlpipeError
from mlpipe.core.params import load_params
from mlpipe.ml import plots
from mlpipe.tracking import registry
from mlpipe.workflows import cost, gate

WORKSPACE = "workspace"
CURVES_PNG = "training_curves.png"
NOW_WRONG_PNG = "now_wrong.png"
NOW_RIGHT_PNG = "now_right.png"
# the most examples of each direction drawn in the changed-verdict grids
CHANGED_SHOWN = 24


class ReportError(MlpipeError):
    """The report cannot be built: unknown revision, malformed predictions, or --out not *.md."""


@dataclass(frozen=True)
class Figure:
    """A PNG of the report: its alt text, its file name in the figures folder, and how to draw it."""

    alt: str
    file: str
    draw: Callable[[Path], None]

    def markdown(self, folder: str | None) -> str:
        """The image linked under ``folder`` (relative to the report); None: named in words."""
        if folder is None:
            return f"*({self.alt}: in the merge request pipeline's report)*"
        return f"![{self.alt}]({folder}/{self.file})"


@dataclass(frozen=True)
class FigureRow:
    """Figures side by side, each under its caption: a one-row markdown table."""

    captions: Sequence[str]
    figures: Sequence[Figure]

    def markdown(self, folder: str | None) -> list[str]:
        """The table's lines: the captions as its header, the figures as its one row."""
        cells = [figure.markdown(folder) for figure in self.figures]
        return [
            "| " + " | ".join(self.captions) + " |",
            "|" + "---|" * len(cells),
            "| " + " | ".join(cells) + " |",
        ]


# a section's content: a markdown line, a figure on a line of its own, or figures side by side
Block = str | Figure | FigureRow


@dataclass(frozen=True)
class Report:
    """What the report says, gathered once: the comparison of the workspace at ``head`` with
    revision ``base``, as text per section and figures drawn only when written."""

    head: str
    base: str
    base_commit: str
    verdict: str
    significance: str
    checks: Sequence[str]
    # `dvc metrics diff --md` and `dvc params diff --md`: markdown tables, "" when nothing changed
    metrics_diff: str
    params_diff: str
    per_class: Sequence[str]
    costs: Sequence[str]
    curves: Sequence[Block]
    confusion: Sequence[Block]
    changed: Sequence[Block]

    @classmethod
    def build(cls, base: str) -> Report:
        """Compare the pipeline results in the working tree with those committed at ``base``."""
        params = load_params()
        base_commit = _resolve(base)
        metrics = gate.read_metrics()
        old, new = base_side(base), workspace_side(metrics)
        decision = gate.evaluate(params, metrics, registry.open_registry())
        old_predictions, new_predictions = predictions(old), predictions(new)
        result = (
            compare.compare_predictions(old_predictions, new_predictions)
            if old_predictions and new_predictions
            else None
        )
        return cls(
            head=vcs.git_or_none("rev-parse", "--short", "HEAD") or "?",
            base=base,
            base_commit=base_commit,
            verdict=verdict(old, new, decision),
            significance=significance(result, old),
            checks=_gate_lines(decision),
            metrics_diff=vcs.dvc("metrics", "diff", "--md", base),
            params_diff=vcs.dvc("params", "diff", "--md", base),
            per_class=per_class_table(old, new),
            costs=cost_table(base, base_commit),
            curves=_curves([old, new]),
            confusion=_confusion_matrices({"base": old, WORKSPACE: new}),
            changed=changed_examples(old_predictions, new_predictions, result),
        )

    def figures(self) -> list[Figure]:
        """Every figure, in the order the report shows them."""
        found: list[Figure] = []
        for block in (*self.curves, *self.confusion, *self.changed):
            if isinstance(block, Figure):
                found.append(block)
            elif isinstance(block, FigureRow):
                found.extend(block.figures)
        return found

    def render(self, figures: str | None) -> str:
        """The markdown; each figure linked under ``figures``, the folder of its PNG relative to
        the report, or with None named in words (for a text that travels without the files)."""

        def lines(blocks: Sequence[Block]) -> list[str]:
            shown: list[str] = []
            for block in blocks:
                if isinstance(block, Figure):
                    shown.append(block.markdown(figures))
                elif isinstance(block, FigureRow):
                    shown += block.markdown(figures)
                else:
                    shown.append(block)
            return shown

        return "\n".join(
            [
                "# Model report",
                "",
                f"The {WORKSPACE} at `{self.head}` compared with `{self.base}` (`{self.base_commit[:7]}`).",
                "",
                self.verdict,
                "",
                self.significance,
                "",
                *self.checks,
                "",
                "## Metrics",
                "",
                self.metrics_diff or "No metric changed.",
                "",
                "## Params",
                "",
                self.params_diff or "No param changed.",
                "",
                "## Per-class changes (test split)",
                "",
                *self.per_class,
                "",
                "## Cost",
                "",
                *self.costs,
                "",
                "## Training curves",
                "",
                *lines(self.curves),
                "",
                "## Confusion matrix (test split)",
                "",
                *lines(self.confusion),
                "",
                "## Examples that changed verdict",
                "",
                *lines(self.changed),
                "",
            ]
        )

    def write(self, out: Path) -> None:
        """Draw the figures into the folder named after ``out`` (reports/report.md ->
        reports/report/), replacing it whole, then write the markdown linking them to ``out``."""
        folder = out.with_suffix("")
        with atomic.replace_dir(folder) as staging:
            for figure in self.figures():
                figure.draw(staging / figure.file)
        atomic.write_text(out, self.render(folder.name))


def write_report(base: str, out: Path) -> str:
    """Write the report comparing the workspace with revision ``base`` to ``out``; return the verdict."""
    if out.suffix != ".md":
        raise ReportError(f"--out {out}: the report is markdown; name it *.md")
    report = Report.build(base)
    report.write(out)
    return report.verdict


@dataclass(frozen=True)
class Side:
    """One side of the comparison: a label and its pipeline results (None where absent)."""

    label: str
    metrics: dict[str, float] | None
    history: str | None
    predictions: str | None
    per_class: str | None
    # DVC's hash of data/prepared in dvc.lock: which test split the predictions are on
    data_hash: str | None


def _resolve(rev: str) -> str:
    """The commit ``rev`` names; an error says how to make it available."""
    commit = vcs.git_or_none("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if commit is None:
        raise ReportError(
            f"unknown git revision {rev!r}; fetch it first (e.g. `git fetch origin main`) "
            "and pass it with --base"
        )
    return commit


def _git_file(rev: str, path: Path) -> str | None:
    """A file's text at ``rev`` (relative to the current directory); None if it is not there."""
    return vcs.git_or_none("show", f"{rev}:./{path.as_posix()}")


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
        data_hash=locked_hash(_git_file(rev, paths.DVC_LOCK), paths.PREPARED_DIR),
    )


def workspace_side(metrics: dict[str, float]) -> Side:
    """The pipeline results in the working tree."""
    return Side(
        label=WORKSPACE,
        metrics=metrics,
        history=_workspace_file(paths.TRAIN_HISTORY_FILE),
        predictions=_workspace_file(paths.PREDICTIONS_FILE),
        per_class=_workspace_file(paths.PER_CLASS_FILE),
        data_hash=locked_hash(_workspace_file(paths.DVC_LOCK), paths.PREPARED_DIR),
    )


def locked_hash(lock_text: str | None, out: Path) -> str | None:
    """The hash dvc.lock (its text) records for the output ``out``; None when it has none."""
    try:
        lock = yaml.safe_load(lock_text or "") or {}
    except yaml.YAMLError:
        return None
    for stage in (lock.get("stages") or {}).values() if isinstance(lock, dict) else ():
        for entry in stage.get("outs") or []:
            if entry.get("path") == out.as_posix() and entry.get("md5"):
                return f"md5:{entry['md5']}"
    return None


def _columns(table: str) -> dict[str, list[float]]:
    """A numeric CSV as columns."""
    rows = tables.rows(table)
    return {name: [float(row[name]) for row in rows] for name in (rows[0] if rows else {})}


def class_order(sides: Sequence[Side]) -> list[str]:
    """Class names in schema order (per_class.csv), then any others the predictions name."""
    order: dict[str, None] = {}
    for side in sides:
        order.update(dict.fromkeys(row["class"] for row in tables.rows(side.per_class)))
    for side in sides:
        for row in tables.rows(side.predictions):
            order.update(dict.fromkeys((row["actual"], row["predicted"])))
    return list(order)


def confusion(predictions: str, classes: Sequence[str]) -> np.ndarray:
    """Counts per (actual, predicted) class from predictions.csv."""
    index = {name: i for i, name in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for row in tables.rows(predictions):
        matrix[index[row["actual"]], index[row["predicted"]]] += 1
    return matrix


def _headline(metrics: Mapping[str, float] | None) -> float | None:
    value = (metrics or {}).get(gate.HEADLINE)
    return float(value) if isinstance(value, int | float) else None


def verdict(base: Side, workspace: Side, decision: gate.Decision) -> str:
    """One line: the headline metric old → new with its change, and the gate's decision."""
    new, old = _headline(workspace.metrics), _headline(base.metrics)
    if new is None:
        change = f"{gate.HEADLINE} missing from {workspace.label}'s {paths.METRICS_FILE}"
    elif old is None:
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
        lines.append(f"- ➖ no `{registry.CHAMPION}` in the model registry: nothing to compare with")
    return lines


def _curves(sides: Sequence[Side]) -> list[Block]:
    """Both sides' training curves in one figure."""
    histories = {side.label: _columns(side.history) for side in sides if side.history}
    if not histories:
        return [f"No {paths.TRAIN_HISTORY_FILE} on either side."]
    draw = partial(plots.curves_png, series=histories, title="training")
    return [Figure(f"training curves, {' vs '.join(histories)}", CURVES_PNG, draw)]


def _confusion_matrices(sides: Mapping[str, Side]) -> list[Block]:
    """One confusion matrix per side (``sides`` maps a file name part to it), side by side."""
    classes = class_order(list(sides.values()))
    captions, figures = [], []
    for name, side in sides.items():
        if side.predictions is None:
            continue
        accuracy = _headline(side.metrics)
        title = side.label + (f" (accuracy {accuracy:.4f})" if accuracy is not None else "")
        matrix = confusion(side.predictions, classes)
        draw = partial(plots.confusion_matrix_png, matrix=matrix, classes=classes, title=title)
        captions.append(side.label)
        figures.append(Figure(f"confusion matrix, {side.label}", f"confusion_{name}.png", draw))
    if not figures:
        return [f"No {paths.PREDICTIONS_FILE} on either side."]
    return [FigureRow(captions, figures)]


def predictions(side: Side) -> compare.Predictions | None:
    """The side's test predictions; None when it has none. A malformed file is an error."""
    if not side.predictions:
        return None
    try:
        return compare.Predictions.from_csv(side.predictions, side.data_hash)
    except ValueError as e:
        raise ReportError(f"{paths.PREDICTIONS_FILE} at {side.label}: {e}; rerun `dvc repro evaluate`") from e


def significance(result: compare.Comparison | None, base: Side) -> str:
    """One line: is the accuracy change significant at the 5 % level, or within noise?"""
    if result is None:
        return f"**Signal or noise:** no {paths.PREDICTIONS_FILE} on `{base.label}` to compare with."
    interval = result.interval
    bounds = f"95 % interval for the change [{interval.low:+.4f}, {interval.high:+.4f}] ({interval.method})"
    change = f"the change ({result.change:+.4f})"
    if result.p_value is None:
        verdict_text = (
            "is significant at the 5 % level: the interval excludes 0"
            if result.significant
            else "is within noise: the interval includes 0"
        )
        return (
            f"**Signal or noise:** a paired comparison is not possible: {result.unpaired_reason}. "
            f"{change.capitalize()} {verdict_text}; {bounds}."
        )
    verdict_text = (
        f"is significant at the 5 % level ({compare.p_text(result.p_value)})"
        if result.significant
        else f"is within noise ({compare.p_text(result.p_value)})"
    )
    return (
        f"**Signal or noise:** {change} {verdict_text}: McNemar's exact test on the "
        f"{result.now_wrong + result.now_right} test examples the models disagree on "
        f"({result.now_wrong} right → wrong, {result.now_right} wrong → right); {bounds}."
    )


def _scores(side: Side) -> dict[str, tuple[float, float, float]]:
    return {
        row["class"]: (float(row["precision"]), float(row["recall"]), float(row["f1"]))
        for row in tables.rows(side.per_class)
    }


def _old_new(old: float | None, new: float | None) -> str:
    return " → ".join("-" if value is None else f"{value:.4f}" for value in (old, new))


def per_class_table(base: Side, workspace: Side) -> list[str]:
    """Precision, recall and F1 per class old → new, the classes whose F1 moved most first."""
    changes = compare.class_changes(_scores(base), _scores(workspace))
    if not changes:
        return [f"No {paths.PER_CLASS_FILE} on either side."]
    lines = [
        f"`{base.label}` → {workspace.label}, the classes whose F1 moved most first.",
        "",
        "| Class | Precision | Recall | F1 | F1 change |",
        "|---|---|---|---|---|",
    ]
    for change in changes:
        old, new = change.old or (None,) * 3, change.new or (None,) * 3
        cells = [_old_new(o, n) for o, n in zip(old, new, strict=True)]
        delta = f"{change.new[2] - change.old[2]:+.4f}" if change.old and change.new else "-"
        lines.append(f"| {change.name} | {' | '.join(cells)} | {delta} |")
    return lines


def changed_examples(
    old: compare.Predictions | None,
    new: compare.Predictions | None,
    result: compare.Comparison | None,
) -> list[Block]:
    """The test examples that went right → wrong and wrong → right (paired only): images in
    grids, a table's rows in markdown tables."""
    if old is None or new is None or result is None or not result.paired:
        return ["Not shown: the two sides' test examples cannot be paired."]
    actual = new.actual
    now_wrong, now_right = compare.changed_verdicts(actual, old.predicted, new.predicted)
    lines: list[Block] = [f"{len(now_wrong)} right → wrong, {len(now_right)} wrong → right."]
    if not now_wrong and not now_right:
        return lines
    what = "Images"
    try:
        schema = read_any_schema()
        what = "Rows" if isinstance(schema, TableSchema) else what
        test = read_examples(paths.TEST_SPLIT, schema)
    except MlpipeError as e:
        return [*lines, "", f"{what} unavailable: {e}"]
    if [schema.classes[label] for label in test.labels] != list(actual):
        return [
            *lines,
            "",
            f"{what} unavailable: {paths.PREPARED_DIR} does not hold these predictions' test split.",
        ]
    for indices, file, title, shown_prediction, which in (
        (now_wrong, NOW_WRONG_PNG, "right → wrong (true → new prediction)", new.predicted, "New"),
        (now_right, NOW_RIGHT_PNG, "wrong → right (true → old prediction)", old.predicted, "Old"),
    ):
        if not indices:
            continue
        chosen = indices[:CHANGED_SHOWN]
        true, predicted = [actual[i] for i in chosen], [shown_prediction[i] for i in chosen]
        more = f", first {CHANGED_SHOWN} of {len(indices)}" if len(indices) > CHANGED_SHOWN else ""
        lines += ["", f"**{title}**{more}:", ""]
        if isinstance(test, Table):
            lines += rows_table(test, chosen, true, predicted, f"{which} prediction")
            continue
        draw = partial(
            plots.misclassified_png,
            images=test.images[chosen],
            true=true,
            predicted=predicted,
            limit=CHANGED_SHOWN,
        )
        lines.append(Figure(title, file, draw))
    return lines


def _cell(value: float | str | None) -> str:
    """A value as a markdown table cell: blank where missing, a pipe escaped."""
    if value is None:
        return ""
    text = f"{value:g}" if isinstance(value, float) else value
    return " ".join(text.split()).replace("|", "\\|")


def rows_table(
    test: Table, chosen: Sequence[int], true: Sequence[str], predicted: Sequence[str], predicted_header: str
) -> list[str]:
    """The test split's rows at ``chosen`` as a markdown table: each row's number in the test
    split's file (after the header), its values (blank where missing), its class and prediction."""
    records = test.subset(np.asarray(chosen, dtype=np.int64)).records()
    header = ["Row", *(_cell(name) for name in test.features), "Class", predicted_header]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, record, label, guess in zip(chosen, records, true, predicted, strict=True):
        cells = [str(index + 1), *(_cell(value) for value in record.values()), _cell(label), _cell(guess)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _base_package(commit: str, dest: Path) -> str | None:
    """Fetch ``commit``'s models/package into ``dest`` (DVC cache, else remote); None if done,
    else why not."""
    from dvc.exceptions import DvcException
    from dvc.fs import DVCFileSystem

    try:
        DVCFileSystem(url=".", rev=commit).get(paths.PACKAGE_DIR.as_posix(), str(dest), recursive=True)
    except FileNotFoundError as e:
        return f"not in the DVC cache or remote: {e}"
    except (DvcException, OSError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def cost_table(base_label: str, base_commit: str) -> list[str]:
    """Parameters, package size and ONNX Runtime latency of both packages, measured now."""
    if not paths.PACKAGE_DIR.is_dir():
        return [f"Unavailable: no package in {paths.PACKAGE_DIR}; run `dvc repro` first."]
    with tempfile.TemporaryDirectory(prefix="mlpipe-report-") as tmp:
        base_dir = Path(tmp) / "base"
        missing = _base_package(base_commit, base_dir)
        dirs = {WORKSPACE: paths.PACKAGE_DIR} | ({} if missing else {"base": base_dir})
        try:
            costs = cost.measure(dirs)
        except MlpipeError as e:
            return [f"Unavailable: {e}"]
    new, old = costs[WORKSPACE], costs.get("base")
    # a project that moved from images to a table compares an image's latency with a row's
    example = new.example if old is None or old.example == new.example else "example"
    rows: list[tuple[str, str, Callable[[cost.Cost], float]]] = [
        ("parameters", "{:,.0f}", lambda c: c.parameters),
        ("package size (kB)", "{:,.1f}", lambda c: c.package_bytes / 1000),
        (f"latency, 1 {example} (ms, median)", "{:.3f}", lambda c: c.single_ms),
        (f"latency, batch of {new.batch_size} (ms, median)", "{:.3f}", lambda c: c.batch_ms),
    ]
    lines = [
        "ONNX Runtime (CPU), both packages in this run on this machine, alternating round by round.",
        "",
        f"| | {base_label} | {WORKSPACE} | Ratio |",
        "|---|---|---|---|",
    ]
    for name, number, value in rows:
        shown_old = number.format(value(old)) if old else "-"
        ratio = f"{value(new) / value(old):.2f}×" if old and value(old) else "-"
        lines.append(f"| {name} | {shown_old} | {number.format(value(new))} | {ratio} |")
    if missing:
        lines += [
            "",
            f"The package of `{base_label}` is unavailable ({missing}): only the workspace's is shown.",
        ]
    return lines

"""The report's markdown: written with its figures beside it, and the same text without them
(the merge request's description)."""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

import numpy as np

from mlpipe.ml import plots
from mlpipe.workflows.report import Figure, FigureRow, Report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HISTORY = {"epoch": [1.0, 2.0], "train_loss": [0.9, 0.4], "val_loss": [1.0, 0.5], "val_accuracy": [0.7, 0.9]}


def matrix_figure(label: str, name: str) -> Figure:
    draw = partial(
        plots.confusion_matrix_png, matrix=np.eye(2, dtype=np.int64), classes=["0", "1"], title=label
    )
    return Figure(f"confusion matrix, {label}", f"confusion_{name}.png", draw)


def example_report() -> Report:
    """A report of a base and a workspace model, with a figure of each kind."""
    curves = partial(
        plots.curves_png, series={"origin/main": HISTORY, "workspace": HISTORY}, title="training"
    )
    return Report(
        head="08dfe97",
        base="origin/main",
        base_commit="c402295" + "0" * 33,
        verdict="**Verdict:** test_accuracy 0.9889 → 0.9944 (+0.0056) · gate ✅ passes",
        significance="**Signal or noise:** no reports/predictions.csv on `origin/main` to compare with.",
        checks=["- ✅ test_accuracy 0.9944 ≥ 0.95"],
        metrics_diff="",
        params_diff="| Path | Param | origin/main | workspace |\n|---|---|---|---|",
        per_class=["No reports/per_class.csv on either side."],
        costs=["Unavailable: no package in models/package; run `dvc repro` first."],
        curves=[Figure("training curves, origin/main vs workspace", "training_curves.png", curves)],
        confusion=[
            FigureRow(
                ["origin/main", "workspace"],
                [matrix_figure("origin/main", "base"), matrix_figure("workspace", "workspace")],
            )
        ],
        changed=["0 right → wrong, 2 wrong → right."],
    )


def test_the_written_report_links_each_figure_drawn_beside_it(tmp_path: Path) -> None:
    out = tmp_path / "report.md"
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "now_wrong.png").write_bytes(PNG_SIGNATURE)  # from an earlier report
    example_report().write(out)
    markdown = out.read_text(encoding="utf-8")
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", markdown)
    assert links == [
        "report/training_curves.png",
        "report/confusion_base.png",
        "report/confusion_workspace.png",
    ]
    assert sorted(path.name for path in (tmp_path / "report").iterdir()) == sorted(
        Path(link).name for link in links
    )
    for link in links:
        assert (tmp_path / link).read_bytes().startswith(PNG_SIGNATURE)
    assert (
        "| ![confusion matrix, origin/main](report/confusion_base.png) | ![confusion matrix, workspace]"
        in markdown
    )
    assert markdown.startswith(
        "# Model report\n\nThe workspace at `08dfe97` compared with `origin/main` (`c402295`)."
    )
    assert "## Metrics\n\nNo metric changed.\n" in markdown


def test_without_figures_it_is_the_same_text_with_each_figure_named_in_words() -> None:
    report = example_report()
    with_figures, without = report.render(figures="report"), report.render(figures=None)
    assert "](" not in without
    differing = [
        (shown, named)
        for shown, named in zip(with_figures.splitlines(), without.splitlines(), strict=True)
        if shown != named
    ]
    assert differing == [
        (
            "![training curves, origin/main vs workspace](report/training_curves.png)",
            "*(training curves, origin/main vs workspace: in the merge request pipeline's report)*",
        ),
        (
            "| ![confusion matrix, origin/main](report/confusion_base.png) | "
            "![confusion matrix, workspace](report/confusion_workspace.png) |",
            "| *(confusion matrix, origin/main: in the merge request pipeline's report)* | "
            "*(confusion matrix, workspace: in the merge request pipeline's report)* |",
        ),
    ]

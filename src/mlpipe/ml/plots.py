"""PNG figures for reports: confusion matrix, misclassified examples, training curves."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from mlpipe.core import atomic


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt, plt.figure(figsize=(width, height), dpi=100)


def _save(plt, fig, path: Path) -> None:
    buffer = io.BytesIO()
    # No timestamp or version in the metadata, so equal figures are equal bytes.
    fig.savefig(buffer, format="png", bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    atomic.write_bytes(path, buffer.getvalue())


def confusion_matrix_png(path: Path, matrix: np.ndarray, classes: Sequence[str], title: str) -> None:
    """Counts per (true, predicted) class, annotated."""
    size = max(4.0, 0.55 * len(classes) + 2)
    plt, fig = _figure(size, size)
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues")
    ax.set(
        xticks=range(len(classes)),
        yticks=range(len(classes)),
        xlabel="predicted",
        ylabel="true",
        title=title,
    )
    ax.set_xticklabels(classes, rotation=45, ha="right")
    ax.set_yticklabels(classes)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, col), count in np.ndenumerate(matrix):
        if count:
            ax.text(
                col,
                row,
                str(count),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if count > threshold else "black",
            )
    _save(plt, fig, path)


def misclassified_png(
    path: Path, images: np.ndarray, true: Sequence[str], predicted: Sequence[str], limit: int
) -> None:
    """A grid of up to ``limit`` misclassified images captioned `true → predicted`: grayscale
    images [N, H, W] in inverted greys, RGB images [N, H, W, 3] in their colours."""
    count = min(len(images), limit)
    columns = max(1, min(6, count))
    rows = max(1, -(-count // columns))
    plt, fig = _figure(1.6 * columns, 1.8 * rows)
    if count == 0:
        fig.text(0.5, 0.5, "no misclassified examples", ha="center", va="center")
    for i in range(count):
        ax = fig.add_subplot(rows, columns, i + 1)
        if images.ndim == 3:
            ax.imshow(images[i], cmap="gray_r")
        else:
            ax.imshow(images[i])
        ax.set_title(f"{true[i]} → {predicted[i]}", fontsize=8)
        ax.axis("off")
    _save(plt, fig, path)


def misclassified_rows_png(
    path: Path,
    rows: Sequence[Mapping[str, float | str | None]],
    true: Sequence[str],
    predicted: Sequence[str],
) -> None:
    """A table of misclassified rows: each row's values (blank where missing), then `true → predicted`."""
    columns = list(rows[0]) if rows else []
    cells = [
        [
            "" if row[c] is None else f"{row[c]:g}" if isinstance(row[c], float) else str(row[c])
            for c in columns
        ]
        + [f"{t} → {p}"]
        for row, t, p in zip(rows, true, predicted, strict=True)
    ]
    plt, fig = _figure(max(4.0, 1.3 * (len(columns) + 1)), 0.6 + 0.28 * max(1, len(cells)))
    ax = fig.add_subplot()
    ax.axis("off")
    if not cells:
        fig.text(0.5, 0.5, "no misclassified examples", ha="center", va="center")
    else:
        table = ax.table(
            cellText=cells, colLabels=[*columns, "true → predicted"], loc="center", cellLoc="left"
        )
        table.auto_set_font_size(False)
        table.set_fontsize(7)
    _save(plt, fig, path)


def curves_png(path: Path, series: Mapping[str, Mapping[str, Sequence[float]]], title: str) -> None:
    """Training curves: loss (log scale) and accuracy; one colour per name, train dashed.

    ``series`` maps a name (e.g. "main", "workspace") to columns of a training history.
    """
    plt, fig = _figure(10, 3.6)
    for position, kind in enumerate(("loss", "accuracy"), start=1):
        ax = fig.add_subplot(1, 2, position)
        for colour, (name, history) in enumerate(series.items()):
            epochs = history["epoch"]
            for split, style in (("train", "--"), ("val", "-")):
                column = f"{split}_{kind}"
                if column in history:
                    ax.plot(epochs, history[column], style, color=f"C{colour}", label=f"{name} {split}")
        ax.set(xlabel="epoch", ylabel=kind, title=f"{title}: {kind}")
        if kind == "loss":  # late epochs differ by orders of magnitude, not by a visible margin
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(plt, fig, path)

"""Stage `prepare`: load the configured dataset and write a stratified train/val/test split."""

from __future__ import annotations

import logging
import math
from fractions import Fraction

import numpy as np
from sklearn.model_selection import train_test_split

from mlpipe.contracts.data import LabeledImages, Schema, write_split
from mlpipe.core import atomic, paths
from mlpipe.core.errors import DataError
from mlpipe.core.params import DataParams, Params
from mlpipe.ml.datasets.sources import load_source

log = logging.getLogger(__name__)


def _stratified(
    labels: np.ndarray, index: np.ndarray, size: float | int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``index`` into (rest, taken) with ``size`` taken, preserving class proportions."""
    try:
        rest, taken = train_test_split(index, test_size=size, stratify=labels[index], random_state=seed)
    except ValueError as e:
        raise DataError(
            f"cannot split the dataset stratified by class: {e}; add examples or change the fractions"
        ) from e
    return np.asarray(rest), np.asarray(taken)


def split_indices(labels: np.ndarray, params: DataParams) -> dict[str, np.ndarray]:
    """Deterministic stratified train/val/test indices from ``data.seed``."""
    index = np.arange(len(labels))
    if params.max_samples is not None and params.max_samples < len(index):
        _, index = _stratified(labels, index, params.max_samples, params.seed)
    rest, test = _stratified(labels, index, params.test_fraction, params.seed)
    val_share = params.val_fraction / (1.0 - params.test_fraction)
    train, val = _stratified(labels, rest, val_share, params.seed)
    return {paths.TRAIN_SPLIT: train, paths.VAL_SPLIT: val, paths.TEST_SPLIT: test}


def pixel_stats(images: np.ndarray, pixel_max: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of ``images / pixel_max`` (images [N, H, W] have
    one channel, [N, H, W, C] C of them), computed exactly.

    Integer sums and rational arithmetic: a float reduction's result depends on the CPU's
    vector width, and these values feed every later stage.
    """
    channels = 1 if images.ndim == 3 else images.shape[-1]
    means, stds = [], []
    for pixels in images.astype(np.int64).reshape(-1, channels).T:
        count, total, squares = len(pixels), int(pixels.sum()), int((pixels * pixels).sum())
        mean = Fraction(total, count * pixel_max)
        variance = Fraction(squares, count * pixel_max**2) - mean * mean
        means.append(float(mean))
        stds.append(math.sqrt(variance))
    return tuple(means), tuple(stds)


def _class_counts(data: LabeledImages) -> dict[str, int]:
    counts = np.bincount(data.labels, minlength=len(data.classes))
    return {name: int(count) for name, count in zip(data.classes, counts, strict=True)}


def run(params: Params) -> None:
    """Read the source dataset, split it, and write data/prepared/ atomically."""
    dataset = load_source(params.data)
    log.info(
        "loaded %s: %d images of %s, %d classes",
        params.data.dataset,
        len(dataset),
        "×".join(map(str, dataset.images.shape[1:])),
        len(dataset.classes),
    )
    splits = {name: dataset.subset(idx) for name, idx in split_indices(dataset.labels, params.data).items()}
    mean, std = pixel_stats(splits[paths.TRAIN_SPLIT].images, dataset.pixel_max)
    if dataset.channels == 1 and std[0] == 0.0:
        raise DataError("every training image has the same pixel value; nothing to learn from")
    if 0.0 in std:
        raise DataError(
            f"every training image has the same value in colour channel {std.index(0.0)} (0: red, "
            "1: green, 2: blue), which cannot be standardised; set data.channels: 1 to read them as grayscale"
        )
    schema = Schema(
        dataset=params.data.dataset,
        classes=dataset.classes,
        image_shape=(int(dataset.images.shape[1]), int(dataset.images.shape[2])),
        pixel_max=dataset.pixel_max,
        pixel_mean=tuple(round(m, 6) for m in mean),
        pixel_std=tuple(round(s, 6) for s in std),
        split_counts={name: _class_counts(split) for name, split in splits.items()},
        channels=dataset.channels,
        decoding=dataset.decoding,
    )
    with atomic.replace_dir(paths.PREPARED_DIR) as staging:
        for name, split in splits.items():
            write_split(staging, name, split)
        atomic.write_json(staging / paths.SCHEMA_FILE.name, schema.to_json())
    log.info("wrote %s: %s", paths.PREPARED_DIR, ", ".join(f"{n}={len(s)}" for n, s in splits.items()))

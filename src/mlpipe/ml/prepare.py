"""Stage `prepare`: load the configured dataset and write a stratified train/val/test split
(images: .npy arrays; a table: typed CSV files), with the schema the later stages check."""

from __future__ import annotations

import logging
import math
from fractions import Fraction

import numpy as np
from sklearn.model_selection import train_test_split

from mlpipe.contracts import table as tables
from mlpipe.contracts.data import LabeledImages, Schema, write_split
from mlpipe.core import atomic, paths
from mlpipe.core.errors import DataError, ParamsError
from mlpipe.core.params import DataParams, Params
from mlpipe.ml.datasets.sources import load_source
from mlpipe.ml.datasets.table import RawTable, load_raw_table

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
    if params.data.is_table:
        prepare_table(params.data)
        return
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


def _feature_names(raw: RawTable, params: DataParams, target: str) -> list[str]:
    available = list(raw.columns)
    if target not in raw.columns:
        raise DataError(f"{raw.source}: no column {target!r} (data.target); its columns: {available}")
    features = params.features or [name for name in available if name != target]
    unknown = [name for name in [*features, *(params.columns or {})] if name not in raw.columns]
    if unknown:
        raise DataError(
            f"{raw.source}: no column {unknown[0]!r} (named in data.features or data.columns); "
            f"its columns: {available}"
        )
    untyped = [name for name in params.columns or {} if name not in features]
    if untyped:
        raise ParamsError(f"data.columns: {untyped[0]!r} is not one of the features {features}")
    if not features:
        raise DataError(f"{raw.source}: no feature column besides the target {target!r}")
    return features


def prepare_table(params: DataParams) -> None:
    """Type the table's columns (data.columns, else inferred), drop the rows without a label,
    split stratified by label, and write the splits and the schema learnt on the train split."""
    raw = load_raw_table(params)
    target = params.label_column
    assert target is not None  # a table dataset always has one
    features = _feature_names(raw, params, target)
    labelled = [
        i for i, text in enumerate(raw.columns[target]) if text is not None and not tables.is_missing(text)
    ]
    if len(labelled) < len(raw):
        log.info("dropped %d of %d rows without a %s", len(raw) - len(labelled), len(raw), target)
    label_texts = [str(raw.columns[target][i]).strip() for i in labelled]
    classes = tuple(sorted(set(label_texts)))
    if len(classes) < 2:
        raise DataError(
            f"{raw.source}: column {target!r} holds {len(classes)} class; a classifier needs at least 2"
        )
    index = {name: i for i, name in enumerate(classes)}
    types = {
        name: (params.columns or {}).get(name) or tables.infer_type(raw.columns[name]) for name in features
    }
    values = {}
    for name in features:  # every row parsed, so that an error names the row of the file
        texts = raw.columns[name]
        number = types[name] == tables.NUMBER
        parsed = tables.parse_numbers(name, texts) if number else tables.parse_categories(texts)
        values[name] = parsed[labelled]
    table = tables.Table(values, np.asarray([index[t] for t in label_texts], dtype=np.int64), classes)
    log.info(
        "loaded %s: %d rows, %d features, %d classes", raw.source, len(table), len(features), len(classes)
    )
    splits = {name: table.subset(idx) for name, idx in split_indices(table.labels, params).items()}
    train = splits[paths.TRAIN_SPLIT]
    schema = tables.TableSchema(
        dataset=params.dataset,
        target=target,
        columns=tuple(tables.describe(name, types[name], train.features[name]) for name in features),
        classes=classes,
        split_counts={
            name: dict(zip(classes, np.bincount(split.labels, minlength=len(classes)).tolist(), strict=True))
            for name, split in splits.items()
        },
    )
    with atomic.replace_dir(paths.PREPARED_DIR) as staging:
        for name, split in splits.items():
            tables.write_split(staging, name, split, schema)
        atomic.write_json(staging / paths.SCHEMA_FILE.name, schema.to_json())
    log.info("wrote %s: %s", paths.PREPARED_DIR, ", ".join(f"{n}={len(s)}" for n, s in splits.items()))

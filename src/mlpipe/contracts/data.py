"""Labelled images as arrays, the prepared data's schema, and reading/writing the prepared splits.

Images are uint8 and channels-last: [N, H, W] for grayscale, [N, H, W, 3] for RGB.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlpipe.contracts import table
from mlpipe.contracts.images import ImageDecoding
from mlpipe.contracts.table import Table, TableSchema
from mlpipe.core import atomic, paths
from mlpipe.core.errors import ArtifactError

SCHEMA_VERSION = 1
CHANNELS = (1, 3)  # grayscale, RGB


def image_array_shape(image_shape: tuple[int, int], channels: int) -> tuple[int, ...]:
    """One image's array shape: (H, W) for grayscale, (H, W, channels) for colour."""
    return image_shape if channels == 1 else (*image_shape, channels)


def per_channel_json(values: tuple[float, ...]) -> float | list[float]:
    """Per-channel values as JSON: the number itself for one channel (the format of grayscale
    data, unchanged), a list for several."""
    return values[0] if len(values) == 1 else list(values)


def per_channel_values(raw: Any) -> tuple[float, ...]:
    """The per-channel values that `per_channel_json` wrote."""
    values = raw if isinstance(raw, list) else [raw]
    if not values:
        raise ValueError("per-channel values must not be empty")
    return tuple(float(value) for value in values)


@dataclass(frozen=True)
class LabeledImages:
    """Images with integer labels.

    ``images`` is uint8 [N, H, W] (grayscale) or [N, H, W, 3] (RGB) in the dataset's own scale
    (0..``pixel_max``); ``labels`` is int64 [N] indexing ``classes``. ``decoding`` says how image
    files become such pixels, when they came from image files.
    """

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    pixel_max: int
    decoding: ImageDecoding | None = None

    def __post_init__(self) -> None:
        colour = self.images.ndim == 4 and self.images.shape[3] in CHANNELS[1:]
        if not (self.images.ndim == 3 or colour) or self.images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 [N, H, W] or [N, H, W, 3], got {self.images.dtype} {self.images.shape}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels shape {self.labels.shape} does not match {self.images.shape[0]} images")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def channels(self) -> int:
        """1 for grayscale images [N, H, W], 3 for RGB [N, H, W, 3]."""
        return 1 if self.images.ndim == 3 else int(self.images.shape[3])

    def subset(self, index: np.ndarray) -> LabeledImages:
        """The examples at ``index``, in that order."""
        return LabeledImages(
            self.images[index], self.labels[index], self.classes, self.pixel_max, self.decoding
        )


@dataclass(frozen=True)
class Schema:
    """What prepare promises about its outputs (data/prepared/schema.json).

    The images are uint8, ``image_shape`` (height, width) and ``channels`` of them, channels last:
    [N, H, W] for 1 channel, [N, H, W, 3] (RGB) for 3. ``pixel_mean`` and ``pixel_std`` hold one
    value per channel. schema.json leaves ``channels`` out for 1 channel and writes the stats of
    one channel as numbers (lists for several), so grayscale data keep their bytes; ``decoding``
    is there when the images came from files.
    """

    dataset: str
    classes: tuple[str, ...]
    image_shape: tuple[int, int]
    pixel_max: int
    pixel_mean: tuple[float, ...]
    pixel_std: tuple[float, ...]
    split_counts: dict[str, dict[str, int]]
    channels: int = 1
    decoding: ImageDecoding | None = None

    def __post_init__(self) -> None:
        if self.channels not in CHANNELS:
            raise ValueError(f"channels must be one of {CHANNELS}, got {self.channels}")
        if not len(self.pixel_mean) == len(self.pixel_std) == self.channels:
            raise ValueError(
                f"pixel_mean and pixel_std need one value for each of the {self.channels} channels"
            )

    @property
    def array_shape(self) -> tuple[int, ...]:
        """One image's array shape: (H, W) or (H, W, channels)."""
        return image_array_shape(self.image_shape, self.channels)

    def to_json(self) -> dict[str, Any]:
        raw: dict[str, Any] = {
            "version": SCHEMA_VERSION,
            "dataset": self.dataset,
            "classes": list(self.classes),
            "image_shape": list(self.image_shape),
            "dtype": "uint8",
            "pixel_range": [0, self.pixel_max],
            # mean/std of train pixels scaled to [0, 1], per channel; used for normalisation
            "pixel_mean": per_channel_json(self.pixel_mean),
            "pixel_std": per_channel_json(self.pixel_std),
            "splits": {
                name: {"count": sum(counts.values()), "class_counts": counts}
                for name, counts in self.split_counts.items()
            },
        }
        if self.channels != 1:
            raw["channels"] = self.channels
        if self.decoding is not None:
            raw["decoding"] = self.decoding.to_json()
        return raw

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Schema:
        decoding = raw.get("decoding")
        return cls(
            dataset=raw["dataset"],
            classes=tuple(raw["classes"]),
            image_shape=(int(raw["image_shape"][0]), int(raw["image_shape"][1])),
            pixel_max=int(raw["pixel_range"][1]),
            pixel_mean=per_channel_values(raw["pixel_mean"]),
            pixel_std=per_channel_values(raw["pixel_std"]),
            split_counts={name: dict(s["class_counts"]) for name, s in raw["splits"].items()},
            channels=int(raw.get("channels", 1)),
            decoding=None if decoding is None else ImageDecoding.from_json(decoding),
        )


def write_split(root: Path, split: str, data: LabeledImages) -> None:
    """Write one split's arrays as .npy files (deterministic bytes)."""
    atomic.write_npy(paths.split_images(split, root), np.ascontiguousarray(data.images))
    atomic.write_npy(paths.split_labels(split, root), data.labels.astype(np.int64))


def read_schema(root: Path = paths.PREPARED_DIR) -> Schema:
    """Read schema.json of the prepared data."""
    path = root / paths.SCHEMA_FILE.name
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("version") != SCHEMA_VERSION:
            raise ArtifactError(
                f"{path}: schema version {raw.get('version')!r}, expected {SCHEMA_VERSION}; "
                "rerun `dvc repro prepare`"
            )
        return Schema.from_json(raw)
    except FileNotFoundError as e:
        raise ArtifactError(f"{path}: not found; run `dvc repro prepare` first") from e
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, IndexError) as e:
        raise ArtifactError(f"{path}: malformed schema ({e}); rerun `dvc repro prepare`") from e


def read_split(split: str, root: Path = paths.PREPARED_DIR, schema: Schema | None = None) -> LabeledImages:
    """Load one prepared split and check it against the schema."""
    schema = schema or read_schema(root)
    arrays = []
    for path in (paths.split_images(split, root), paths.split_labels(split, root)):
        try:
            arrays.append(np.load(path, allow_pickle=False))
        except FileNotFoundError as e:
            raise ArtifactError(f"{path}: not found; run `dvc repro prepare` first") from e
        except (ValueError, OSError, EOFError) as e:
            # an empty file raises EOFError, which the CLI framework would print as "Aborted."
            problem = "empty file" if isinstance(e, EOFError) else str(e)
            raise ArtifactError(
                f"{path}: not a valid .npy array ({problem}); rerun `dvc repro prepare`"
            ) from e
    images, labels = arrays
    if images.dtype != np.uint8 or images.shape[1:] != schema.array_shape:
        raise ArtifactError(
            f"{paths.split_images(split, root)}: expected uint8 images of shape "
            f"[N, {', '.join(map(str, schema.array_shape))}], got {images.dtype} {list(images.shape)}"
        )
    if labels.shape != (images.shape[0],) or labels.dtype != np.int64:
        raise ArtifactError(
            f"{paths.split_labels(split, root)}: expected {images.shape[0]} int64 labels, "
            f"got {labels.dtype} {list(labels.shape)}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= len(schema.classes)):
        raise ArtifactError(f"{paths.split_labels(split, root)}: labels outside 0..{len(schema.classes) - 1}")
    return LabeledImages(images, labels, schema.classes, schema.pixel_max, schema.decoding)


def read_any_schema(root: Path = paths.PREPARED_DIR) -> Schema | TableSchema:
    """The prepared data's schema, images' or a table's (whose schema.json says ``kind: table``)."""
    path = root / paths.SCHEMA_FILE.name
    try:
        kind = json.loads(path.read_text(encoding="utf-8")).get("kind")
    except (FileNotFoundError, json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        kind = None  # read_schema says what is wrong
    return table.read_schema(root) if kind == table.TABLE_KIND else read_schema(root)


def read_examples(
    split: str, schema: Schema | TableSchema, root: Path = paths.PREPARED_DIR
) -> LabeledImages | Table:
    """One prepared split, images or table rows, as ``schema`` (`read_any_schema`) says."""
    if isinstance(schema, TableSchema):
        return table.read_split(split, root, schema)
    return read_split(split, root, schema)

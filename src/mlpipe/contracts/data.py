"""Labelled images as arrays, the prepared data's schema, and reading/writing the prepared splits."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlpipe.core import atomic, paths
from mlpipe.core.errors import ArtifactError

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class LabeledImages:
    """Grayscale images with integer labels.

    ``images`` is uint8 [N, H, W] in the dataset's own scale (0..``pixel_max``);
    ``labels`` is int64 [N] indexing ``classes``.
    """

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    pixel_max: int

    def __post_init__(self) -> None:
        if self.images.ndim != 3 or self.images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 [N, H, W], got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels shape {self.labels.shape} does not match {self.images.shape[0]} images")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: np.ndarray) -> LabeledImages:
        """The examples at ``index``, in that order."""
        return LabeledImages(self.images[index], self.labels[index], self.classes, self.pixel_max)


@dataclass(frozen=True)
class Schema:
    """What prepare promises about its outputs (data/prepared/schema.json)."""

    dataset: str
    classes: tuple[str, ...]
    image_shape: tuple[int, int]
    pixel_max: int
    pixel_mean: float
    pixel_std: float
    split_counts: dict[str, dict[str, int]]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": SCHEMA_VERSION,
            "dataset": self.dataset,
            "classes": list(self.classes),
            "image_shape": list(self.image_shape),
            "dtype": "uint8",
            "pixel_range": [0, self.pixel_max],
            # mean/std of train pixels scaled to [0, 1]; used for normalisation
            "pixel_mean": self.pixel_mean,
            "pixel_std": self.pixel_std,
            "splits": {
                name: {"count": sum(counts.values()), "class_counts": counts}
                for name, counts in self.split_counts.items()
            },
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Schema:
        return cls(
            dataset=raw["dataset"],
            classes=tuple(raw["classes"]),
            image_shape=(int(raw["image_shape"][0]), int(raw["image_shape"][1])),
            pixel_max=int(raw["pixel_range"][1]),
            pixel_mean=float(raw["pixel_mean"]),
            pixel_std=float(raw["pixel_std"]),
            split_counts={name: dict(s["class_counts"]) for name, s in raw["splits"].items()},
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
    if images.dtype != np.uint8 or images.shape[1:] != schema.image_shape:
        raise ArtifactError(
            f"{paths.split_images(split, root)}: expected uint8 images of shape "
            f"[N, {schema.image_shape[0]}, {schema.image_shape[1]}], got {images.dtype} {list(images.shape)}"
        )
    if labels.shape != (images.shape[0],) or labels.dtype != np.int64:
        raise ArtifactError(
            f"{paths.split_labels(split, root)}: expected {images.shape[0]} int64 labels, "
            f"got {labels.dtype} {list(labels.shape)}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= len(schema.classes)):
        raise ArtifactError(f"{paths.split_labels(split, root)}: labels outside 0..{len(schema.classes) - 1}")
    return LabeledImages(images, labels, schema.classes, schema.pixel_max)

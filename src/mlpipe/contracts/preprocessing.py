"""The one definition of input preprocessing, shared by training, evaluation and the exported
model: `Preprocessing` for images, `TablePreprocessing` for tables.

`normalise` uses only arithmetic that NumPy arrays and torch tensors share, so the package
stage builds it into the served graph from the same code and constants.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from mlpipe.contracts.data import LabeledImages, Schema, per_channel_json, per_channel_values
from mlpipe.contracts.table import TABLE_KIND, Column, Table, TableSchema
from mlpipe.contracts.table import codes as table_codes

if TYPE_CHECKING:
    import torch

ArrayT = TypeVar("ArrayT", np.ndarray, "torch.Tensor")


@dataclass(frozen=True)
class Preprocessing:
    """Maps raw pixels (0..pixel_max) to model input: scale to [0, 1], then standardise each
    channel with its own ``mean`` and ``std`` (one value each for grayscale)."""

    pixel_max: float
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def channels(self) -> int:
        return len(self.mean)

    def normalise(self, pixels: ArrayT) -> ArrayT:
        """Float32 raw pixels, channels last ([..., H, W] grayscale, [..., H, W, C] colour; NumPy
        array or torch tensor) -> normalised values, same shape."""
        if self.channels == 1:
            return (pixels / self.pixel_max - self.mean[0]) / self.std[0]
        return (pixels / self.pixel_max - _constant(pixels, self.mean)) / _constant(pixels, self.std)

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """Raw pixels [N, H, W] or [N, H, W, C] of any real dtype -> float32 network input
        [N, C, H, W]."""
        normalised = self.normalise(pixels.astype(np.float32))
        if self.channels == 1:
            return normalised[:, None, :, :]
        return np.ascontiguousarray(normalised.transpose(0, 3, 1, 2))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``mean`` and ``std`` as numbers for one channel, lists for several."""
        return {
            "pixel_max": self.pixel_max,
            "mean": per_channel_json(self.mean),
            "std": per_channel_json(self.std),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Preprocessing:
        pixel_max, mean, std = (
            float(raw["pixel_max"]),
            per_channel_values(raw["mean"]),
            per_channel_values(raw["std"]),
        )
        if not (pixel_max > 0 and min(std) > 0):
            raise ValueError(f"preprocessing needs pixel_max > 0 and std > 0, got {pixel_max}, {list(std)}")
        if len(mean) != len(std):
            raise ValueError(
                f"preprocessing needs one mean and one std per channel, got {len(mean)} and {len(std)}"
            )
        return cls(pixel_max=pixel_max, mean=mean, std=std)


def _constant(like: ArrayT, values: tuple[float, ...]) -> ArrayT:
    """``values`` as a float32 array or tensor of the kind of ``like``, to broadcast over channels."""
    if isinstance(like, np.ndarray):
        return np.asarray(values, dtype=np.float32)
    return like.new_tensor(values)


@dataclass(frozen=True)
class TablePreprocessing:
    """Maps a table's columns to model input, as learnt on the training split: a missing number
    becomes its column's training mean, every number is standardised with that mean and standard
    deviation, and each category becomes one 0/1 value per training level (all 0 for a missing or
    unseen level). The model input is the numbers, then the categories' one-hot blocks, in the
    order of ``columns``."""

    columns: tuple[Column, ...]

    @property
    def numbers(self) -> tuple[Column, ...]:
        return tuple(column for column in self.columns if column.is_number)

    @property
    def categories(self) -> tuple[Column, ...]:
        return tuple(column for column in self.columns if not column.is_number)

    @property
    def width(self) -> int:
        """Values per row of model input."""
        return len(self.numbers) + sum(len(column.levels) for column in self.categories)

    def features(self, numbers: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """float32 numbers [N, numbers] (NaN where missing) and int64 level codes [N, categories]
        (-1: missing or unseen) -> float32 model input [N, width]."""
        import torch

        mean = numbers.new_tensor([column.mean for column in self.numbers])
        std = numbers.new_tensor([column.std for column in self.numbers])
        blocks = [(torch.where(torch.isnan(numbers), mean, numbers) - mean) / std]
        for i, column in enumerate(self.categories):
            levels = torch.arange(len(column.levels), dtype=codes.dtype, device=codes.device)
            blocks.append((codes[:, i : i + 1] == levels).to(numbers.dtype))
        return torch.cat(blocks, dim=1)

    def encode(self, table: Table) -> tuple[np.ndarray, np.ndarray]:
        """A table's rows as `features` takes them: float32 numbers [N, numbers] (NaN where
        missing) and int64 level codes [N, categories]."""
        n = len(table)
        numbers = [table.features[c.name].astype(np.float32) for c in self.numbers]
        codes = [table_codes(table.features[c.name], c) for c in self.categories]
        return (
            np.stack(numbers, axis=1) if numbers else np.zeros((n, 0), np.float32),
            np.stack(codes, axis=1) if codes else np.zeros((n, 0), np.int64),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"kind": TABLE_KIND, "columns": [column.to_json() for column in self.columns]}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TablePreprocessing:
        if raw.get("kind") != TABLE_KIND or not raw.get("columns"):
            raise ValueError("table preprocessing needs kind 'table' and at least one column")
        return cls(tuple(Column.from_json(column) for column in raw["columns"]))


AnyPreprocessing = Preprocessing | TablePreprocessing


def preprocessing_from_dict(raw: dict[str, Any]) -> AnyPreprocessing:
    """Either preprocessing from its JSON form (a table's says its kind)."""
    return (
        TablePreprocessing.from_dict(raw)
        if isinstance(raw, dict) and raw.get("kind") == TABLE_KIND
        else Preprocessing.from_dict(raw)
    )


def preprocessing_of(schema: Schema | TableSchema) -> AnyPreprocessing:
    """The preprocessing the prepared data's schema defines (learnt on the train split)."""
    if isinstance(schema, TableSchema):
        return TablePreprocessing(schema.columns)
    return Preprocessing(schema.pixel_max, schema.pixel_mean, schema.pixel_std)


def model_inputs(examples: LabeledImages | Table, preprocessing: AnyPreprocessing) -> torch.Tensor:
    """Examples as the network takes them, on the CPU: normalised images [N, C, H, W], or a
    table's preprocessed rows [N, width]."""
    import torch

    if isinstance(examples, Table) and isinstance(preprocessing, TablePreprocessing):
        numbers, codes = preprocessing.encode(examples)
        return preprocessing.features(torch.from_numpy(numbers), torch.from_numpy(codes))
    if isinstance(examples, LabeledImages) and isinstance(preprocessing, Preprocessing):
        return torch.from_numpy(preprocessing.apply(examples.images))
    raise TypeError(f"{type(preprocessing).__name__} does not preprocess {type(examples).__name__}")

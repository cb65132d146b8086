"""The one definition of input preprocessing, shared by training, evaluation and the exported model.

`normalise` uses only arithmetic that NumPy arrays and torch tensors share, so the package
stage builds it into the served graph from the same code and constants.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from mlpipe.contracts.data import per_channel_json, per_channel_values

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

"""The one definition of input preprocessing, shared by training, evaluation and the exported model.

`normalise` uses only arithmetic that NumPy arrays and torch tensors share, so the package
stage builds it into the served graph from the same code and constants.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

ArrayT = TypeVar("ArrayT", np.ndarray, "torch.Tensor")


@dataclass(frozen=True)
class Preprocessing:
    """Maps raw pixels (0..pixel_max) to model input: scale to [0, 1], then standardise."""

    pixel_max: float
    mean: float
    std: float

    def normalise(self, pixels: ArrayT) -> ArrayT:
        """Float32 raw pixels (NumPy array or torch tensor) -> normalised values, same shape."""
        return (pixels / self.pixel_max - self.mean) / self.std

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """Raw pixels [N, H, W] of any real dtype -> float32 network input [N, 1, H, W]."""
        return self.normalise(pixels.astype(np.float32))[:, None, :, :]

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Preprocessing:
        pixel_max, std = float(raw["pixel_max"]), float(raw["std"])
        if not (pixel_max > 0 and std > 0):
            raise ValueError(f"preprocessing needs pixel_max > 0 and std > 0, got {pixel_max}, {std}")
        return cls(pixel_max=pixel_max, mean=float(raw["mean"]), std=std)

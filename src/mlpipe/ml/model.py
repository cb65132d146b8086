"""The classifier: a small CNN for images or an MLP for tables, shaped by params; the one
function that builds it; and its checkpoint format."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlpipe.contracts.data import image_array_shape
from mlpipe.contracts.preprocessing import AnyPreprocessing, TablePreprocessing, preprocessing_from_dict
from mlpipe.core import atomic
from mlpipe.core.errors import ArtifactError
from mlpipe.core.params import ModelParams

CHECKPOINT_FORMAT = 1


class ConvNet(nn.Module):
    """`depth` conv blocks (conv3x3 → [batch norm] → ReLU → 2×2 max-pool while the map is ≥ 2 px),
    channels starting at `width` and doubling, then a dropout-regularised two-layer head.
    ``image_shape`` is one image's as the prepared data hold it: (H, W), or (H, W, C) for C
    colour channels."""

    def __init__(self, params: ModelParams, image_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        height, width = image_shape[:2]
        channels = image_shape[2] if len(image_shape) == 3 else 1
        first = params.width or 1  # an image model's params always set it (core.params)
        for block in range(params.depth):
            out_channels = first * 2**block
            layers.append(nn.Conv2d(channels, out_channels, 3, padding=1, bias=not params.batch_norm))
            if params.batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
            if min(height, width) >= 2:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(params.dropout),
            nn.Linear(channels * height * width, params.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(params.dropout),
            nn.Linear(params.hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images [N, C, H, W] → logits [N, num_classes]."""
        return self.head(self.features(x))


class TableNet(nn.Module):
    """`depth` hidden layers of `hidden` units (linear → [batch norm] → ReLU → dropout), then a
    linear layer to the classes: for a table's preprocessed rows of ``width`` values."""

    def __init__(self, params: ModelParams, width: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(params.depth):
            layers.append(nn.Linear(width, params.hidden, bias=not params.batch_norm))
            if params.batch_norm:
                layers.append(nn.BatchNorm1d(params.hidden))
            layers += [nn.ReLU(inplace=True), nn.Dropout(params.dropout)]
            width = params.hidden
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed rows [N, width] → logits [N, num_classes]."""
        return self.layers(x)


def build_model(params: ModelParams, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The network `train` fits and a checkpoint rebuilds, logits [N, num_classes] out. For
    images of ``input_shape`` as the prepared data hold them ((H, W) with C = 1, or (H, W, C)):
    normalised images [N, C, H, W] in. For a table (``input_shape`` (width,)): preprocessed rows
    [N, width] in. The one place that names the model's classes."""
    if len(input_shape) == 1:
        return TableNet(params, input_shape[0], num_classes)
    return ConvNet(params, input_shape, num_classes)


@dataclass(frozen=True)
class Checkpoint:
    """A trained model with everything needed to rebuild and feed it."""

    model_params: ModelParams
    image_shape: tuple[int, ...]  # (H, W) of an image model; () for a table's
    classes: tuple[str, ...]
    preprocessing: AnyPreprocessing
    state_dict: dict[str, torch.Tensor]

    @property
    def is_table(self) -> bool:
        return isinstance(self.preprocessing, TablePreprocessing)

    @property
    def channels(self) -> int:
        """An image model's colour channels (one normalisation mean each); 0 for a table model."""
        return 0 if isinstance(self.preprocessing, TablePreprocessing) else self.preprocessing.channels

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One example's shape as the network is built for it: an image's (H, W), or (H, W, C)
        for colour; a table's preprocessed row (width,)."""
        if isinstance(self.preprocessing, TablePreprocessing):
            return (self.preprocessing.width,)
        return image_array_shape((self.image_shape[0], self.image_shape[1]), self.preprocessing.channels)

    def build(self) -> nn.Module:
        """The model in eval mode, on the CPU, with the trained weights."""
        model = build_model(self.model_params, self.input_shape, len(self.classes))
        model.load_state_dict(self.state_dict)
        return model.eval()


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Write the checkpoint atomically; equal weights give identical bytes."""
    payload: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "model_params": checkpoint.model_params.model_dump(),
    }
    if not checkpoint.is_table:
        payload["image_shape"] = list(checkpoint.image_shape)
    payload |= {
        "classes": list(checkpoint.classes),
        "preprocessing": checkpoint.preprocessing.to_dict(),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in checkpoint.state_dict.items()},
    }
    # Serialise in memory: torch names the archive after the file, and the temporary
    # name of an atomic write would otherwise end up in the bytes.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic.write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint`, checking that it fits its architecture."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise ArtifactError(f"{path}: not found; run `dvc repro train` first") from e
    except Exception as e:  # torch raises several unrelated types for a damaged archive
        raise ArtifactError(f"{path}: not a readable checkpoint ({e}); rerun `dvc repro train`") from e
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ArtifactError(f"{path}: unknown checkpoint format; rerun `dvc repro train`")
    try:
        checkpoint = Checkpoint(
            model_params=ModelParams.model_validate(payload["model_params"]),
            image_shape=tuple(int(n) for n in payload.get("image_shape", ())),
            classes=tuple(payload["classes"]),
            preprocessing=preprocessing_from_dict(payload["preprocessing"]),
            state_dict=payload["state_dict"],
        )
        checkpoint.build()
    except (KeyError, ValueError, RuntimeError, IndexError) as e:
        raise ArtifactError(f"{path}: inconsistent checkpoint ({e}); rerun `dvc repro train`") from e
    return checkpoint


@torch.no_grad()
def predict_logits(model: nn.Module, inputs: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits for model inputs (normalised images [N, C, H, W] or preprocessed rows [N, width]),
    computed in eval mode in batches."""
    was_training = model.training
    model.eval()
    outputs = [model(batch).float() for batch in inputs.split(batch_size)]
    model.train(was_training)
    return torch.cat(outputs) if outputs else inputs.new_zeros((0,))

"""ONNX export of a checkpoint as the served model, and its check against PyTorch.

The graph takes raw pixels [N, H, W] (grayscale) or [N, H, W, 3] (RGB, channels last) in the
data's own dtype (mlpipe.contracts.manifest.INPUT_DTYPE) and returns class probabilities [N, C];
the cast, the normalisation and the move of the channels before the rows happen inside it, so
every consumer (the server, MLflow's pyfunc, ONNX Runtime) feeds it the pixels as the prepared
arrays hold them.
"""

from __future__ import annotations

import contextlib
import io
import logging

import numpy as np
import torch
from torch import nn

from mlpipe.contracts.manifest import INPUT_DTYPE, INPUT_NAME, OUTPUT_NAME
from mlpipe.contracts.preprocessing import Preprocessing
from mlpipe.core.errors import ArtifactError
from mlpipe.ml.model import Checkpoint

PIXEL_DTYPE = getattr(torch, INPUT_DTYPE)


class ServedModel(nn.Module):
    """Raw pixels [N, H, W] or [N, H, W, C] (INPUT_DTYPE) -> class probabilities [N, C],
    preprocessing included."""

    def __init__(self, network: nn.Module, preprocessing: Preprocessing) -> None:
        super().__init__()
        self.network = network
        self.preprocessing = preprocessing

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        normalised = self.preprocessing.normalise(pixels.to(torch.float32))
        if self.preprocessing.channels == 1:
            inputs = normalised.unsqueeze(1)
        else:
            inputs = normalised.permute(0, 3, 1, 2)
        return torch.softmax(self.network(inputs), dim=1)


def export_onnx(checkpoint: Checkpoint, opset: int) -> bytes:
    """Export with a dynamic batch dimension; the bytes depend only on the weights, not on
    where the code lives."""
    served = ServedModel(checkpoint.build(), checkpoint.preprocessing).eval()
    example = torch.zeros((2, *checkpoint.input_shape), dtype=PIXEL_DTYPE)
    batch = torch.export.Dim("batch", min=1, max=65_536)
    # The exporter narrates its steps on stdout and warns about torchvision ops this model
    # never uses (torch resets its loggers on import, so this cannot live in the CLI setup).
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(
            served,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            verbose=False,
        )
    assert program is not None  # the dynamo exporter always returns one
    model = program.model_proto
    # Per-node provenance (source stack traces with absolute paths, FX node names) would make
    # the bytes depend on where the repository is checked out; the graph does not need it.
    for node in model.graph.node:
        del node.metadata_props[:]
    return model.SerializeToString()


def verify_onnx(onnx_bytes: bytes, checkpoint: Checkpoint, images: np.ndarray) -> np.ndarray:
    """Run the exported model with ONNX Runtime on raw ``images`` and check it agrees with
    PyTorch; return its output."""
    import onnxruntime

    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    pixels = np.ascontiguousarray(images, dtype=INPUT_DTYPE)
    exported = session.run([OUTPUT_NAME], {INPUT_NAME: pixels})[0]
    with torch.no_grad():
        reference = ServedModel(checkpoint.build(), checkpoint.preprocessing)(
            torch.from_numpy(pixels)
        ).numpy()
    if (
        not np.allclose(exported, reference, atol=1e-5)
        or not (exported.argmax(1) == reference.argmax(1)).all()
    ):
        raise ArtifactError("the exported ONNX model disagrees with the PyTorch model; not packaging it")
    return exported

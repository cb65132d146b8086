"""The ONNX export: equal weights give equal bytes wherever the code is checked out."""

import sys
from pathlib import Path

import numpy as np
import torch

import mlpipe
from mlpipe.export import export_onnx, verify_onnx
from mlpipe.model import Checkpoint, ConvNet
from mlpipe.params import ModelParams
from mlpipe.preprocessing import Preprocessing


def _checkpoint() -> Checkpoint:
    torch.manual_seed(0)
    params = ModelParams(width=4, hidden=8)
    model = ConvNet(params, (8, 8), num_classes=3)
    return Checkpoint(params, (8, 8), ("a", "b", "c"), Preprocessing(16.0, 0.3, 0.4), model.state_dict())


def test_exported_model_holds_no_filesystem_paths() -> None:
    exported = export_onnx(_checkpoint(), opset=18)
    for location in (Path(mlpipe.__file__).parent, Path(torch.__file__).parent, Path(sys.prefix)):
        assert str(location).encode() not in exported


def test_export_is_byte_identical_for_equal_weights() -> None:
    assert export_onnx(_checkpoint(), opset=18) == export_onnx(_checkpoint(), opset=18)


def test_exported_model_takes_raw_pixels_and_matches_torch() -> None:
    checkpoint = _checkpoint()
    pixels = np.random.default_rng(0).integers(0, 17, size=(5, 8, 8)).astype(np.uint8)
    probabilities = verify_onnx(export_onnx(checkpoint, opset=18), checkpoint, pixels)
    assert probabilities.shape == (5, 3)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_exported_graph_takes_the_data_own_dtype() -> None:
    import onnxruntime

    session = onnxruntime.InferenceSession(
        export_onnx(_checkpoint(), opset=18), providers=["CPUExecutionProvider"]
    )
    [pixels] = session.get_inputs()
    assert (pixels.name, pixels.type) == ("pixels", "tensor(uint8)")

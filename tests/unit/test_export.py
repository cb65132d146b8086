"""The ONNX export: equal weights give equal bytes wherever the code is checked out."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mlpipe
from mlpipe.contracts.preprocessing import Preprocessing
from mlpipe.core.params import ModelParams
from mlpipe.ml.export import export_onnx, verify_onnx
from mlpipe.ml.model import Checkpoint, build_model
from tests.conftest import TINY_PARAMS


def _checkpoint() -> Checkpoint:
    torch.manual_seed(0)
    params = ModelParams.model_validate(TINY_PARAMS["model"])
    model = build_model(params, (8, 8), num_classes=3)
    return Checkpoint(
        params, (8, 8), ("a", "b", "c"), Preprocessing(16.0, (0.3,), (0.4,)), model.state_dict()
    )


@pytest.fixture(scope="module")
def exported() -> bytes:
    """One export of ``_checkpoint()``, shared: exporting takes seconds."""
    return export_onnx(_checkpoint(), opset=18)


def test_exported_model_holds_no_filesystem_paths(exported: bytes) -> None:
    for location in (Path(mlpipe.__file__).parent, Path(torch.__file__).parent, Path(sys.prefix)):
        assert str(location).encode() not in exported


def test_export_is_byte_identical_for_equal_weights(exported: bytes) -> None:
    assert export_onnx(_checkpoint(), opset=18) == exported


def test_exported_model_takes_raw_pixels_and_matches_torch(exported: bytes) -> None:
    pixels = np.random.default_rng(0).integers(0, 17, size=(5, 8, 8)).astype(np.uint8)
    probabilities = verify_onnx(exported, _checkpoint(), pixels)
    assert probabilities.shape == (5, 3)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_exported_graph_takes_the_data_own_dtype(exported: bytes) -> None:
    import onnxruntime

    session = onnxruntime.InferenceSession(exported, providers=["CPUExecutionProvider"])
    [pixels] = session.get_inputs()
    assert (pixels.name, pixels.type) == ("pixels", "tensor(uint8)")

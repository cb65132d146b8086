"""Colour channels through the contracts: exact per-channel statistics, per-channel normalisation
into [N, C, H, W], and the JSON of one channel unchanged (grayscale data keep their bytes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from PIL import Image

from mlpipe.contracts.data import Schema
from mlpipe.contracts.images import BILINEAR, ImageDecoding
from mlpipe.contracts.preprocessing import Preprocessing
from mlpipe.core.params import ModelParams
from mlpipe.ml import plots
from mlpipe.ml.export import export_onnx, verify_onnx
from mlpipe.ml.model import Checkpoint, build_model, load_checkpoint, save_checkpoint
from mlpipe.ml.prepare import pixel_stats

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(7, 4, 5, 3), dtype=np.uint8)
GREY = RNG.integers(0, 17, size=(7, 4, 5), dtype=np.uint8)


def test_stats_are_per_channel_and_match_float64() -> None:
    means, stds = pixel_stats(RGB, 255)

    scaled = RGB.astype(np.float64).reshape(-1, 3) / 255
    np.testing.assert_allclose(means, scaled.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stds, scaled.std(axis=0), rtol=1e-12)


def test_grayscale_stats_are_one_channel() -> None:
    means, stds = pixel_stats(GREY, 16)

    assert len(means) == len(stds) == 1
    assert means[0] == pytest.approx(GREY.mean() / 16, rel=1e-12)


def test_colour_is_normalised_per_channel_into_channels_first() -> None:
    pre = Preprocessing(255, (0.1, 0.5, 0.9), (0.2, 0.3, 0.4))

    inputs = pre.apply(RGB)

    assert inputs.shape == (7, 3, 4, 5) and inputs.dtype == np.float32
    for channel in range(3):
        expected = (RGB[..., channel] / np.float32(255) - np.float32(pre.mean[channel])) / np.float32(
            pre.std[channel]
        )
        np.testing.assert_allclose(inputs[:, channel], expected, rtol=1e-6)


def test_torch_and_numpy_normalise_alike() -> None:
    pre = Preprocessing(255, (0.1, 0.5, 0.9), (0.2, 0.3, 0.4))

    in_torch = pre.normalise(torch.from_numpy(RGB.astype(np.float32))).numpy()

    np.testing.assert_array_equal(in_torch, pre.normalise(RGB.astype(np.float32)))


def test_grayscale_preprocessing_is_written_as_numbers_and_colour_as_lists() -> None:
    grey, colour = Preprocessing(16, (0.3,), (0.4,)), Preprocessing(255.0, (0.1, 0.5, 0.9), (0.2, 0.3, 0.4))

    assert grey.to_dict() == {"pixel_max": 16, "mean": 0.3, "std": 0.4}
    assert colour.to_dict() == {"pixel_max": 255.0, "mean": [0.1, 0.5, 0.9], "std": [0.2, 0.3, 0.4]}
    assert Preprocessing.from_dict(colour.to_dict()) == colour
    assert Preprocessing.from_dict(grey.to_dict()) == grey


def test_grayscale_schema_json_has_no_channel_keys_and_colour_round_trips() -> None:
    counts = {"train": {"a": 1, "b": 1}}
    grey = Schema("digits", ("a", "b"), (8, 8), 16, (0.3,), (0.4,), counts)
    colour = Schema(
        "imagefolder",
        ("a", "b"),
        (16, 12),
        255,
        (0.1, 0.5, 0.9),
        (0.2, 0.3, 0.4),
        counts,
        channels=3,
        decoding=ImageDecoding(16, 12, 3, BILINEAR),
    )

    raw = grey.to_json()
    assert "channels" not in raw and "decoding" not in raw
    assert (raw["pixel_mean"], raw["pixel_std"], raw["image_shape"]) == (0.3, 0.4, [8, 8])
    assert Schema.from_json(grey.to_json()) == grey
    assert Schema.from_json(colour.to_json()) == colour
    assert colour.array_shape == (16, 12, 3)


def test_a_schema_needs_stats_for_each_channel() -> None:
    with pytest.raises(ValueError, match="one value for each of the 3 channels"):
        Schema("imagefolder", ("a", "b"), (8, 8), 255, (0.3,), (0.4,), {}, channels=3)


def colour_checkpoint() -> Checkpoint:
    torch.manual_seed(0)
    params = ModelParams(width=4, hidden=8)
    network = build_model(params, (8, 8, 3), num_classes=3)
    preprocessing = Preprocessing(255, (0.1, 0.5, 0.9), (0.2, 0.3, 0.4))
    return Checkpoint(params, (8, 8), ("a", "b", "c"), preprocessing, network.state_dict())


def test_a_colour_checkpoint_takes_three_channels_and_survives_a_round_trip(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "model.pt", colour_checkpoint())

    loaded = load_checkpoint(tmp_path / "model.pt")

    assert (loaded.channels, loaded.input_shape) == (3, (8, 8, 3))
    images = RNG.integers(0, 256, size=(7, 8, 8, 3), dtype=np.uint8)
    logits = loaded.build()(torch.from_numpy(loaded.preprocessing.apply(images)))
    assert logits.shape == (7, 3)


def test_a_colour_model_exports_as_raw_rgb_pixels_in_and_agrees_with_torch() -> None:
    checkpoint = colour_checkpoint()

    onnx_bytes = export_onnx(checkpoint, opset=18)

    [pixels] = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"]).get_inputs()
    assert (pixels.type, pixels.shape[1:]) == ("tensor(uint8)", [8, 8, 3])
    images = RNG.integers(0, 256, size=(5, 8, 8, 3), dtype=np.uint8)
    assert verify_onnx(onnx_bytes, checkpoint, images).shape == (5, 3)


def test_misclassified_colour_images_are_drawn_in_colour(tmp_path: Path) -> None:
    red = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    red[..., 0] = 255

    plots.misclassified_png(tmp_path / "wrong.png", red, ["a", "b"], ["b", "a"], limit=2)

    drawn = np.asarray(Image.open(tmp_path / "wrong.png").convert("RGB")).reshape(-1, 3).astype(int)
    assert ((drawn[:, 0] > 200) & (drawn[:, 1] < 50) & (drawn[:, 2] < 50)).any()

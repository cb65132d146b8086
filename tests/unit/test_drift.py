"""The drift profile and its PSI test (mlpipe.contracts.drift): statistics, the sliding window, the
file format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mlpipe.contracts import drift
from mlpipe.contracts.drift import DriftWindow, Profile
from mlpipe.core.errors import ArtifactError, DataError

PIXEL_MAX = 16


def images(n: int, seed: int = 0, shape: tuple[int, int] = (28, 28)) -> np.ndarray:
    """Images whose mean intensity varies from image to image, like real digits."""
    rng = np.random.default_rng(seed)
    ink = rng.uniform(0.2, 0.45, size=(n, 1, 1))
    return (rng.random((n, *shape)) < ink).astype(np.uint8) * PIXEL_MAX


@pytest.fixture(scope="module")
def profile() -> Profile:
    return Profile.of(images(2000), PIXEL_MAX)


def test_profile_bins_hold_equal_shares_of_the_training_images(profile: Profile) -> None:
    assert len(profile.counts) == drift.PROFILE_BINS == len(profile.edges) + 1
    assert sum(profile.counts) == 2000
    assert max(profile.counts) - min(profile.counts) <= 0.05 * 2000


def test_profile_mean_is_the_mean_of_per_image_mean_intensity(profile: Profile) -> None:
    train = images(2000)
    assert profile.mean == pytest.approx(train.mean() / PIXEL_MAX)
    assert profile.std == pytest.approx((train.reshape(2000, -1).mean(axis=1) / PIXEL_MAX).std())


def test_tied_quantiles_merge_bins() -> None:
    constant = np.full((50, 4, 4), 8, dtype=np.uint8)
    profile = Profile.of(constant, PIXEL_MAX)
    assert profile.edges == (0.5,)
    assert profile.counts == (0, 50)


def test_psi_of_the_training_distribution_is_zero(profile: Profile) -> None:
    assert profile.psi(np.array(profile.counts)) == pytest.approx(0.0)


def test_a_fresh_sample_of_the_same_distribution_does_not_drift(profile: Profile) -> None:
    result = drift.compare(profile, images(500, seed=1))
    assert result.psi < 0.1
    assert not result.drifted


@pytest.mark.parametrize("shift", ["invert", "brighten", "darken"])
def test_shifted_images_drift(profile: Profile, shift: drift.Shift) -> None:
    result = drift.compare(profile, drift.shifted(images(500, seed=1), shift, PIXEL_MAX))
    assert result.psi > 1.0
    assert result.drifted


def test_psi_grows_with_the_shift(profile: Profile) -> None:
    base = images(500, seed=1).astype(np.int32)
    scores = [drift.compare(profile, np.clip(base + k, 0, PIXEL_MAX).astype(np.uint8)).psi for k in (0, 1, 2)]
    assert scores[0] < scores[1] < scores[2]


def test_the_threshold_decides_the_verdict(profile: Profile) -> None:
    sample = images(200, seed=3)
    psi = drift.compare(profile, sample).psi
    assert drift.compare(profile, sample, threshold=psi).drifted
    assert not drift.compare(profile, sample, threshold=psi * 1.01).drifted


def test_result_lines_show_both_distributions_and_the_verdict(profile: Profile) -> None:
    lines = drift.compare(profile, drift.shifted(images(100), "invert", PIXEL_MAX)).lines()
    assert lines[0].startswith("mean_intensity")
    assert len(lines) == 2 + len(profile.counts) + 1
    assert lines[-1].endswith("DRIFT") and "over 100 images" in lines[-1]


def test_window_scores_only_when_full(profile: Profile) -> None:
    window = DriftWindow(profile, size=50)
    window.add(drift.mean_intensity(images(49), PIXEL_MAX))
    assert len(window) == 49 and window.score() is None
    window.add(drift.mean_intensity(images(1, seed=9), PIXEL_MAX))
    assert window.score() is not None


def test_window_scores_exactly_the_last_inputs(profile: Profile) -> None:
    old = drift.shifted(images(80, seed=4), "invert", PIXEL_MAX)
    recent = images(60, seed=5)
    window = DriftWindow(profile, size=60)
    for batch in (old[:30], old[30:], recent[:25], recent[25:]):
        window.add(drift.mean_intensity(batch, PIXEL_MAX))
    assert len(window) == 60
    assert window.score() == pytest.approx(drift.compare(profile, recent).psi)


def test_window_size_must_be_positive(profile: Profile) -> None:
    with pytest.raises(drift.MlpipeError, match="at least 1, got 0"):
        DriftWindow(profile, size=0)


def test_shifts_keep_pixels_in_range() -> None:
    sample = np.array([[[0, 8, 16]]], dtype=np.uint8)
    assert drift.shifted(sample, "invert", PIXEL_MAX).tolist() == [[[16, 8, 0]]]
    assert drift.shifted(sample, "brighten", PIXEL_MAX).tolist() == [[[4, 12, 16]]]
    assert drift.shifted(sample, "darken", PIXEL_MAX).tolist() == [[[0, 4, 12]]]
    assert drift.shifted(sample, "none", PIXEL_MAX) is sample


def test_profile_round_trips_through_json(profile: Profile, tmp_path: Path) -> None:
    (tmp_path / "profile.json").write_text(json.dumps(profile.to_json()))
    assert drift.read_profile(tmp_path) == profile


def test_missing_profile_says_how_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"profile\.json: not found; rebuild .* --no-monitoring"):
        drift.read_profile(tmp_path)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"version": 2}, "profile version 2"),
        ({"feature": "pixel_means"}, "of feature 'pixel_means'"),
        ({"counts": [1, 2]}, "one count more than edges"),
        ({"edges": [0.5, 0.2] + [0.9] * 7}, "ascending, distinct edges"),
        ({"pixel_max": 0}, "pixel_max >= 1"),
        ({"mean": "bright"}, "could not convert"),
    ],
)
def test_malformed_profile_is_refused(profile: Profile, tmp_path: Path, change: dict, error: str) -> None:
    (tmp_path / "profile.json").write_text(json.dumps({**profile.to_json(), **change}))
    with pytest.raises(ArtifactError, match=rf"malformed drift profile \(.*{error}"):
        drift.read_profile(tmp_path)


def test_images_file_must_hold_integer_images(tmp_path: Path) -> None:
    good, flat, floats = tmp_path / "good.npy", tmp_path / "flat.npy", tmp_path / "floats.npy"
    np.save(good, images(3).astype(np.int64))
    np.save(flat, images(3).reshape(3, -1))
    np.save(floats, images(3).astype(np.float32))
    assert drift.load_images(good).dtype == np.uint8
    for path in (flat, floats):
        with pytest.raises(DataError, match="expected integer images"):
            drift.load_images(path)
    with pytest.raises(DataError, match="not found"):
        drift.load_images(tmp_path / "missing.npy")


def test_images_outside_the_training_pixel_range_are_refused(profile: Profile) -> None:
    with pytest.raises(DataError, match=r"from 0 to 255; .* raw pixels in 0\.\.16"):
        drift.compare(profile, np.array([[[0, 255]]], dtype=np.uint8))

"""The prepared splits: schema, ranges, stratification and determinism."""

from pathlib import Path

import numpy as np
import pytest

from mlpipe.contracts.data import read_schema, read_split
from mlpipe.core import paths
from mlpipe.core.errors import ArtifactError
from mlpipe.core.params import parse_params
from mlpipe.ml import prepare

DIGITS_COUNT = 1797


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _prepare(data: dict | None = None) -> dict[str, bytes]:
    prepare.run(parse_params({"data": data or {}}))
    return {p.name: p.read_bytes() for p in sorted(paths.PREPARED_DIR.iterdir())}


def test_splits_partition_the_dataset_in_the_configured_fractions(workdir: Path) -> None:
    _prepare()
    schema = read_schema()
    counts = {name: sum(c.values()) for name, c in schema.split_counts.items()}
    assert sum(counts.values()) == DIGITS_COUNT
    assert counts["test"] == pytest.approx(DIGITS_COUNT * 0.2, abs=1)
    assert counts["val"] == pytest.approx(DIGITS_COUNT * 0.1, abs=2)


def test_every_split_keeps_the_class_proportions(workdir: Path) -> None:
    _prepare()
    schema = read_schema()
    for split in paths.SPLITS:
        data = read_split(split, schema=schema)
        shares = np.bincount(data.labels, minlength=10) / len(data)
        assert shares == pytest.approx(np.full(10, 0.1), abs=0.012), split


def test_schema_describes_the_arrays(workdir: Path) -> None:
    _prepare()
    schema = read_schema()
    assert schema.classes == tuple(str(d) for d in range(10))
    assert schema.image_shape == (8, 8)
    assert schema.pixel_max == 16
    for split in paths.SPLITS:
        data = read_split(split, schema=schema)
        assert data.images.dtype == np.uint8
        assert data.images.max() <= schema.pixel_max
        counts = np.bincount(data.labels, minlength=10)
        assert dict(zip(schema.classes, counts.tolist(), strict=True)) == schema.split_counts[split]


def test_normalisation_stats_come_from_the_train_split(workdir: Path) -> None:
    _prepare()
    schema = read_schema()
    train = read_split("train", schema=schema).images / 16.0
    assert schema.pixel_mean == pytest.approx((train.mean(),), abs=1e-6)
    assert schema.pixel_std == pytest.approx((train.std(),), abs=1e-6)


def test_same_seed_gives_identical_bytes(workdir: Path) -> None:
    assert _prepare() == _prepare()


def test_another_seed_gives_another_split(workdir: Path) -> None:
    first = _prepare({"seed": 1})
    second = _prepare({"seed": 2})
    assert first["test_labels.npy"] != second["test_labels.npy"]


def test_max_samples_subsamples_stratified(workdir: Path) -> None:
    _prepare({"max_samples": 300})
    schema = read_schema()
    assert sum(sum(c.values()) for c in schema.split_counts.values()) == 300
    assert min(schema.split_counts["train"].values()) >= 18


def test_damaged_split_file_is_reported_with_its_path(workdir: Path) -> None:
    _prepare()
    paths.split_images("val").write_bytes(b"not an array")
    with pytest.raises(ArtifactError, match=r"data/prepared/val_images.npy: not a valid .npy array"):
        read_split("val")


def test_a_failed_prepare_keeps_the_previous_outputs(workdir: Path) -> None:
    before = _prepare()
    with pytest.raises(Exception, match="not found"):
        _prepare({"dataset": "imagefolder", "source": str(workdir / "missing")})
    assert {p.name: p.read_bytes() for p in sorted(paths.PREPARED_DIR.iterdir())} == before

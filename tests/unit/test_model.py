"""The CNN's shapes and the checkpoint format."""

from pathlib import Path

import pytest
import torch

from mlpipe.contracts.preprocessing import Preprocessing
from mlpipe.core.errors import ArtifactError
from mlpipe.core.params import ModelParams
from mlpipe.ml.model import Checkpoint, ConvNet, load_checkpoint, predict_logits, save_checkpoint


@pytest.mark.parametrize("image_shape", [(8, 8), (28, 28), (5, 7)])
@pytest.mark.parametrize("depth", [1, 2, 4])
def test_logits_have_one_column_per_class(image_shape: tuple[int, int], depth: int) -> None:
    model = ConvNet(ModelParams(width=4, depth=depth, hidden=16), image_shape, num_classes=10).eval()
    logits = model(torch.zeros(3, 1, *image_shape))
    assert logits.shape == (3, 10)


def test_width_and_depth_set_the_channels() -> None:
    model = ConvNet(ModelParams(width=6, depth=3, batch_norm=False), (28, 28), num_classes=4)
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [6, 12, 24]


def test_pooling_stops_when_the_map_is_one_pixel() -> None:
    model = ConvNet(ModelParams(width=2, depth=5), (8, 8), num_classes=3)
    pools = [m for m in model.features if isinstance(m, torch.nn.MaxPool2d)]
    assert len(pools) == 3  # 8 -> 4 -> 2 -> 1, then no more


def _checkpoint(seed: int = 0) -> Checkpoint:
    torch.manual_seed(seed)
    params = ModelParams(width=4, hidden=8)
    model = ConvNet(params, (8, 8), num_classes=3)
    return Checkpoint(
        params, (8, 8), ("a", "b", "c"), Preprocessing(16.0, (0.3,), (0.4,)), model.state_dict()
    )


def test_checkpoint_round_trip_keeps_weights_and_metadata(tmp_path: Path) -> None:
    original = _checkpoint()
    save_checkpoint(tmp_path / "model.pt", original)
    loaded = load_checkpoint(tmp_path / "model.pt")
    assert loaded.classes == ("a", "b", "c")
    assert loaded.preprocessing == original.preprocessing
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(loaded.build()(x), original.build()(x))


def test_equal_weights_give_identical_checkpoint_bytes(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "a.pt", _checkpoint(seed=1))
    save_checkpoint(tmp_path / "b.pt", _checkpoint(seed=1))
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()


def test_truncated_checkpoint_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    save_checkpoint(path, _checkpoint())
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ArtifactError, match=r"model.pt: not a readable checkpoint"):
        load_checkpoint(path)


def test_missing_checkpoint_says_which_stage_makes_it(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"not found; run `dvc repro train` first"):
        load_checkpoint(tmp_path / "model.pt")


def test_predict_logits_batches_and_restores_training_mode() -> None:
    model = _checkpoint().build().train()
    x = torch.randn(10, 1, 8, 8)
    batched = predict_logits(model, x, batch_size=3)
    assert model.training
    assert torch.allclose(batched, model.eval()(x), atol=1e-6)

"""The training loop: one typed record per epoch, the one-cycle schedule its params describe."""

from __future__ import annotations

import pytest
import torch

from mlpipe.core.params import ModelParams, TrainParams
from mlpipe.ml.model import build_model
from mlpipe.ml.train import Epoch, Tensors, fit, optimisation, seed_everything
from tests.conftest import TINY_PARAMS

CPU = torch.device("cpu")


def tiny_split(examples: int, seed: int) -> Tensors:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(examples, 1, 8, 8, generator=generator)
    return Tensors(inputs, torch.randint(0, 3, (examples,), generator=generator))


def test_fit_yields_one_record_per_epoch_as_it_trains() -> None:
    params = TrainParams(epochs=3, batch_size=16)
    generator = seed_everything(params.seed, CPU, params.deterministic)
    model = build_model(ModelParams.model_validate(TINY_PARAMS["model"]), (8, 8), 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    epochs = fit(model, tiny_split(40, 0), tiny_split(10, 1), params, CPU, generator)
    first = next(epochs)
    assert isinstance(first, Epoch)
    assert first.epoch == 1
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    records = [first, *epochs]
    assert [r.epoch for r in records] == [1, 2, 3]
    for record in records:
        assert set(record.metrics()) == {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"}
        assert 0.0 <= record.train_accuracy <= 1.0
        assert 0.0 <= record.val_accuracy <= 1.0
        assert record.train_loss > 0.0
        assert record.val_loss > 0.0


@pytest.mark.parametrize("warmup_fraction", [0.15, 0.5])
def test_the_schedule_warms_up_to_lr_over_the_warmup_fraction_then_anneals(warmup_fraction: float) -> None:
    params = TrainParams(epochs=10, lr=0.01, warmup_fraction=warmup_fraction)
    optimizer, schedule = optimisation(torch.nn.Linear(2, 2), params, steps_per_epoch=10)
    rates = []
    for _ in range(100):
        rates.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    peak = max(range(100), key=rates.__getitem__)
    assert peak == round(warmup_fraction * 100) - 1
    assert rates[peak] == pytest.approx(0.01)
    assert rates[-1] < rates[0] < rates[peak]

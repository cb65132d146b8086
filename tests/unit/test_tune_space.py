"""tune.yaml's schema: the repository's file is valid, and each mistake is named by its key."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from mlpipe.core.errors import ParamsError, TuningError
from mlpipe.core.params import load_params, parse_params
from mlpipe.workflows.tuning.space import load_space, parse_scalar, parse_space
from mlpipe.workflows.tuning.study import EXPERIMENT_ATTR, METRICS_ATTR, Tuner, summary, yaml_scalar

REPO_ROOT = Path(__file__).resolve().parents[2]


def space(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "objective": {"metric": "test_accuracy", "direction": "maximize"},
        "params": {"train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-1, "log": True}},
    }
    raw.update(overrides)
    return raw


def test_the_repositorys_tune_yaml_is_valid() -> None:
    load_space(REPO_ROOT / "tune.yaml")


def test_without_an_objective_the_trials_are_chosen_on_validation_and_never_evaluated() -> None:
    raw = space()
    del raw["objective"]
    loaded = parse_space(raw)
    assert (loaded.objective.metric, loaded.objective.direction) == ("val_accuracy", "maximize")
    assert loaded.target_stage() == "train"


def test_the_summary_reports_the_validation_objective_and_leaves_the_test_split_to_the_kept_trial() -> None:
    raw = space()
    del raw["objective"]
    study = optuna.create_study(direction="maximize")
    study.add_trial(
        optuna.trial.create_trial(
            params={"train.lr": 0.01},
            distributions={"train.lr": optuna.distributions.FloatDistribution(1.0e-4, 1.0e-1, log=True)},
            value=0.95,
            user_attrs={EXPERIMENT_ATTR: "mlpipe-0", METRICS_ATTR: {"val_accuracy": 0.95, "val_loss": 0.2}},
        )
    )
    lines = summary(study, parse_space(raw)).splitlines()
    assert "best trial: 0 (mlpipe-0), val_accuracy = 0.9500" in lines
    assert [line for line in lines if "test" in line] == [
        "test split: no trial saw it; the `dvc repro` below scores these params on it, once"
    ]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"params": {"train.lrr": {"type": "float", "low": 0.1, "high": 1.0}}}, "train.lrr: not a param"),
        ({"params": {"lr": {"type": "float", "low": 0.1, "high": 1.0}}}, "lr: not a param"),
        (
            {"params": {"train.lr": {"type": "float", "low": 0.1, "high": 11.0}}},
            "train.lr: 11.0 is not a valid",
        ),
        ({"params": {"model.width": {"type": "float", "low": 1.0, "high": 8.0}}}, "model.width: 1.0 is not"),
        ({"params": {"train.lr": {"type": "float", "low": "1e-4", "high": 1.0}}}, "params.train.lr.low"),
        ({"params": {"train.lr": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}}, "needs low > 0"),
        ({"params": {"model.width": {"type": "int", "low": 8, "high": 4}}}, "must be below high"),
        ({"params": {"model.width": {"type": "int", "low": 8, "high": 30, "step": 8}}}, "multiple of step"),
        ({"params": {"model.width": {"type": "normal", "low": 8, "high": 30}}}, "params.model.width"),
        ({"params": {"model.dropout": {"type": "categorical", "choices": [0.1, 0.1]}}}, "must not repeat"),
        ({"params": {}}, "params: "),
        (
            {"objective": {"metric": "test_loss", "direction": "maximize"}},
            "direction of test_loss is minimize",
        ),
        ({"objective": {"metric": "accuracy", "direction": "maximize"}}, "objective.metric"),
        ({"sampler": {"name": "cmaes"}}, "sampler.name"),
        ({"sampler": {"name": "grid"}}, "make train.lr categorical or int"),
        ({"trials": 0}, "trials"),
        ({"study": "Has Spaces"}, "study"),
        ({"budget": 3}, "budget: unknown key"),
    ],
)
def test_a_mistake_is_named_by_its_key(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(TuningError, match=re.escape(message)):
        parse_space(space(**overrides))


def test_pruning_on_a_curve_of_the_other_direction_is_refused() -> None:
    raw = space(
        objective={"metric": "test_loss", "direction": "minimize"},
        pruning={"enabled": True, "metric": "val_accuracy"},
    )
    with pytest.raises(TuningError, match="prune on the other val_ metric"):
        parse_space(raw)


def test_a_validation_objective_stops_the_trials_after_train() -> None:
    loaded = parse_space(
        space(objective={"metric": "val_loss", "direction": "minimize"}, pruning={"metric": "val_loss"})
    )
    assert loaded.target_stage() == "train"
    assert loaded.metric_files() == ["reports/train_metrics.json"]


def test_suggestions_stay_in_the_space_and_validate_as_params() -> None:
    loaded = parse_space(
        space(
            params={
                "train.lr": {"type": "float", "low": 1.0e-5, "high": 1.0e-1, "log": True},
                "model.width": {"type": "int", "low": 8, "high": 32, "step": 8},
                "model.batch_norm": {"type": "categorical", "choices": [True, False]},
            }
        )
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        chosen = loaded.suggest(study.ask())
        assert 1.0e-5 <= chosen["train.lr"] <= 1.0e-1
        assert chosen["model.width"] in (8, 16, 24, 32)
        # the -S spelling reads back through params.yaml as the same value and type
        text = yaml.safe_dump({"train": {"lr": yaml.safe_load(yaml_scalar(chosen["train.lr"]))}})
        assert parse_params(yaml.safe_load(text)).train.lr == chosen["train.lr"]


@pytest.mark.parametrize("value", [1e-05, 0.003, 1.5e-07, 2.0, 1e20])
def test_a_float_is_spelt_so_that_yaml_1_1_reads_a_float(value: float) -> None:
    assert yaml.safe_load(yaml_scalar(value)) == value


def test_enqueued_params_must_belong_to_the_space() -> None:
    loaded = parse_space(space())
    assert loaded.parse_assignments("train.lr=1e-06") == {"train.lr": 1e-06}
    with pytest.raises(TuningError, match=r"not KEY=VALUE for a param of tune\.yaml"):
        loaded.parse_assignments("train.epochs=3")


def test_command_line_numbers_parse_like_python() -> None:
    assert parse_scalar("1e-06") == 1e-06
    assert parse_scalar("16") == 16
    assert parse_scalar("true") is True


def test_params_yaml_reads_the_floats_dvc_writes_for_small_values(tmp_path: Path) -> None:
    # `dvc exp run -S train.lr=1.0e-07` writes `lr: 1e-07` back, which YAML 1.1 reads as a string
    (tmp_path / "params.yaml").write_text("train:\n  lr: 1e-07\n  weight_decay: 2E-6\n")
    loaded = load_params(tmp_path / "params.yaml")
    assert (loaded.train.lr, loaded.train.weight_decay) == (1e-07, 2e-06)


def test_tune_yaml_reads_floats_written_without_a_dot(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("")
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(space()).replace("0.0001", "1e-4"))
    assert parse_space(space()) == load_space(tmp_path / "tune.yaml")


# A project that trains on the bundled table: its MLP has no conv channels (model.width).
TABLE_PARAMS = "data:\n  dataset: penguins\n  source: data/raw/none\nmodel:\n  width: null\n"


def test_a_space_searching_what_the_projects_data_has_not_is_refused_by_key(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(TABLE_PARAMS)
    searched = {"model.width": {"type": "int", "low": 8, "high": 32, "step": 8}}
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(space(params=searched)))
    with pytest.raises(TuningError) as refused:
        load_space(tmp_path / "tune.yaml")
    message = str(refused.value)
    assert message.startswith(f"{tmp_path / 'tune.yaml'}: params.model.width: 8 does not fit")
    assert "dataset 'penguins' is a table" in message
    assert message.endswith(
        "leave model.width out of " + str(tmp_path / "tune.yaml") + ", or search values that fit"
    )


def test_a_table_projects_space_searches_its_mlp(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(TABLE_PARAMS)
    searched = {
        "model.hidden": {"type": "int", "low": 16, "high": 128, "step": 16},
        "model.depth": {"type": "int", "low": 1, "high": 3},
        "train.lr": {"type": "float", "low": 1.0e-3, "high": 3.0e-2, "log": True},
    }
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(space(params=searched)))
    assert set(load_space(tmp_path / "tune.yaml").params) == set(searched)


def test_a_space_is_checked_against_the_params_yaml_beside_it(tmp_path: Path) -> None:
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(space()))
    with pytest.raises(ParamsError, match=re.escape(f"{tmp_path / 'params.yaml'}: not found")):
        load_space(tmp_path / "tune.yaml")


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_resumed_study_proposes_new_params(tmp_path: Path, sampler: str) -> None:
    searched = parse_space(space(sampler={"name": sampler, "seed": 0}))

    def propose() -> float:
        study = Tuner(searched, tmp_path).open_study()
        trial = study.ask()
        proposed = searched.suggest(trial)["train.lr"]
        study.tell(trial, 0.5)
        return proposed

    first, resumed = propose(), propose()
    assert resumed != first

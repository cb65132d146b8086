"""The Katib Experiment rendered from tune.yaml: valid against Katib's API types, and the same
search as tune.yaml (objective, algorithm, budget, parameters)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from mlpipe.workflows.tuning.katib import STDOUT_METRIC, experiment, metric_lines, to_yaml
from mlpipe.workflows.tuning.space import CategoricalParam, FloatParam, IntParam, load_space, parse_space

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((REPO_ROOT / "tests/data/katib/experiment-v1beta1.schema.json").read_text())
IMAGE = "registry.example.com/ml/mlpipe-train:1.0"
REPO_URL = "https://gitlab.example.com/ml/mlpipe.git"
REVISION = "0123456789abcdef0123456789abcdef01234567"


def render(space_file: Path = REPO_ROOT / "tune.yaml") -> dict[str, Any]:
    rendered = experiment(load_space(space_file), image=IMAGE, repo_url=REPO_URL, revision=REVISION)
    # what kubectl would read: the YAML the command prints
    return yaml.safe_load(to_yaml(rendered))


def validate(document: dict[str, Any]) -> None:
    jsonschema.Draft7Validator(SCHEMA).validate(document)


def test_the_rendered_experiment_validates_against_katibs_api_types() -> None:
    validate(render())


def test_the_trial_job_validates_against_kubernetes_batch_v1() -> None:
    kubernetes_validate.validate(
        render()["spec"]["trialTemplate"]["trialSpec"], latest_version(), strict=True
    )


def test_the_schema_rejects_a_misspelt_key() -> None:
    document = render()
    document["spec"]["parameters"][0]["parameterTyp"] = document["spec"]["parameters"][0].pop("parameterType")
    with pytest.raises(jsonschema.ValidationError, match="parameterTyp"):
        validate(document)


def test_objective_budget_and_algorithm_are_tune_yamls() -> None:
    space = load_space(REPO_ROOT / "tune.yaml")
    spec = render()["spec"]
    assert spec["objective"]["objectiveMetricName"] == space.objective.metric
    assert spec["objective"]["type"] == space.objective.direction
    assert spec["maxTrialCount"] == space.trials
    assert spec["algorithm"]["algorithmName"] == space.sampler.name
    assert spec["metricsCollectorSpec"] == {"collector": {"kind": "StdOut"}}


@pytest.mark.parametrize(("sampler", "algorithm"), [("tpe", "tpe"), ("random", "random"), ("grid", "grid")])
def test_each_sampler_maps_to_katibs_algorithm(tmp_path: Path, sampler: str, algorithm: str) -> None:
    raw = yaml.safe_load((REPO_ROOT / "tune.yaml").read_text())
    raw["sampler"]["name"] = sampler
    raw["params"] = {k: v for k, v in raw["params"].items() if v["type"] != "float"}
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "params.yaml").write_text("")  # the schema's defaults
    document = render(tmp_path / "tune.yaml")
    validate(document)
    assert document["spec"]["algorithm"]["algorithmName"] == algorithm


def test_parameters_are_tune_yamls() -> None:
    space = load_space(REPO_ROOT / "tune.yaml")
    parameters = {p["name"]: p for p in render()["spec"]["parameters"]}
    assert list(parameters) == list(space.params)
    for key, searched in space.params.items():
        feasible = parameters[key]["feasibleSpace"]
        if isinstance(searched, FloatParam):
            assert parameters[key]["parameterType"] == "double"
            assert (float(feasible["min"]), float(feasible["max"])) == (searched.low, searched.high)
            assert feasible["distribution"] == ("logUniform" if searched.log else "uniform")
        elif isinstance(searched, IntParam):
            assert parameters[key]["parameterType"] == "int"
            assert [int(feasible[k]) for k in ("min", "max", "step")] == [
                searched.low,
                searched.high,
                searched.step,
            ]
        else:
            assert isinstance(searched, CategoricalParam)
            assert [yaml.safe_load(v) for v in feasible["list"]] == searched.choices


def test_the_trial_command_receives_every_parameter() -> None:
    template = render()["spec"]["trialTemplate"]
    declared = {p["name"]: p["reference"] for p in template["trialParameters"]}
    assert set(declared.values()) == set(load_space(REPO_ROOT / "tune.yaml").params)
    (container,) = template["trialSpec"]["spec"]["template"]["spec"]["containers"]
    assert container["name"] == template["primaryContainerName"]
    assert container["image"] == IMAGE
    command = container["command"][-1]
    used = set(re.findall(r"\$\{trialParameters\.([^}]+)\}", command))
    assert used == set(declared)
    for name, key in declared.items():
        assert f"--set {key}=${{trialParameters.{name}}}" in command
    assert REVISION in command


def test_katibs_stdout_collector_reads_the_metric_lines() -> None:
    metrics = {"test_accuracy": 0.973, "test_loss": 1.5e-07, "test_examples": 360}
    collected = {}
    for line in metric_lines(metrics):
        match = STDOUT_METRIC.fullmatch(line)
        assert match, line
        collected[match.group(1)] = float(match.group(2))
    assert collected == metrics


def test_a_bool_choice_is_categorical() -> None:
    space = parse_space(
        {
            "objective": {"metric": "test_accuracy", "direction": "maximize"},
            "params": {"model.batch_norm": {"type": "categorical", "choices": [True, False]}},
        }
    )
    document = yaml.safe_load(to_yaml(experiment(space, image=IMAGE, repo_url=REPO_URL, revision=REVISION)))
    validate(document)
    (parameter,) = document["spec"]["parameters"]
    assert parameter["parameterType"] == "categorical"
    assert parameter["feasibleSpace"]["list"] == ["true", "false"]


def test_a_table_projects_experiment_searches_its_mlp(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(
        "data:\n  dataset: penguins\n  source: data/raw/none\nmodel:\n  width: null\n"
    )
    raw = yaml.safe_load((REPO_ROOT / "tune.yaml").read_text())
    raw["params"] = {
        "train.lr": {"type": "float", "low": 1.0e-3, "high": 3.0e-2, "log": True},
        "model.hidden": {"type": "int", "low": 16, "high": 128, "step": 16},
    }
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(raw))
    document = render(tmp_path / "tune.yaml")
    validate(document)
    assert {p["name"] for p in document["spec"]["parameters"]} == {"train.lr", "model.hidden"}

"""tune.yaml as a Katib `Experiment` (kubeflow.org/v1beta1), and the trial it runs on a cluster.

Each Katib trial is a batch `Job` (one pod: the pipeline on digits-sized data trains on one
device; a `TrainJob` adds a runtime and a launcher that single-process trials do not need, and
Katib collects StdOut metrics from a Job without extra trial-resource configuration). The pod
runs the Dockerfile's `train` image: it fetches the project at one commit, then
`mlpipe tune trial --set key=value ...` writes the trial's params, runs prepare, train and
evaluate in one process and prints every metric as a `name=value` line for Katib's StdOut
metrics collector.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

from mlpipe.workflows.tuning.space import CategoricalParam, Choice, FloatParam, IntParam, SearchSpace

API_VERSION = "kubeflow.org/v1beta1"
ALGORITHMS = {"tpe": "tpe", "random": "random", "grid": "grid"}
# Katib's StdOut collector finds `name=value` pairs with this expression (its default filter).
STDOUT_METRIC = re.compile(r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)")
CONTAINER = "trial"
OTHER_METRICS = ("test_accuracy", "test_macro_f1", "test_loss", "val_accuracy", "val_loss")


def _string(value: Choice) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def trial_parameter_name(key: str) -> str:
    """`train.lr` -> `train_lr`: a name `${trialParameters.<name>}` can hold."""
    return key.replace(".", "_")


def parameter(key: str, space: FloatParam | IntParam | CategoricalParam) -> dict[str, Any]:
    """One entry of `spec.parameters`."""
    if isinstance(space, FloatParam):
        feasible = {"min": _string(space.low), "max": _string(space.high)}
        feasible["distribution"] = "logUniform" if space.log else "uniform"
        return {"name": key, "parameterType": "double", "feasibleSpace": feasible}
    if isinstance(space, IntParam):
        feasible = {"min": str(space.low), "max": str(space.high), "step": str(space.step)}
        return {"name": key, "parameterType": "int", "feasibleSpace": feasible}
    numeric = all(isinstance(c, int | float) and not isinstance(c, bool) for c in space.choices)
    return {
        "name": key,
        "parameterType": "discrete" if numeric else "categorical",
        "feasibleSpace": {"list": [_string(c) for c in space.choices]},
    }


def trial_command(space: SearchSpace, repo_url: str, revision: str) -> str:
    """The trial pod's shell command: fetch the project at ``revision``, run the trial."""
    sets = " ".join(f"--set {key}=${{trialParameters.{trial_parameter_name(key)}}}" for key in space.params)
    return (
        f"git init -q /workspace/project && cd /workspace/project"
        f" && git fetch -q --depth 1 {shlex.quote(repo_url)} {shlex.quote(revision)}"
        f" && git checkout -q FETCH_HEAD && mlpipe tune trial {sets}"
    )


def experiment(
    space: SearchSpace,
    *,
    image: str,
    repo_url: str,
    revision: str,
    namespace: str = "kubeflow",
    parallel_trials: int = 2,
    gpus: int = 0,
) -> dict[str, Any]:
    """The Katib Experiment for ``space``: same objective, budget, sampler and parameters."""
    objective = space.objective
    settings = [{"name": "random_state", "value": str(space.sampler.seed)}]
    if space.sampler.name == "tpe":
        settings.append({"name": "n_startup_trials", "value": str(space.sampler.startup_trials)})
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "command": ["sh", "-c", trial_command(space, repo_url, revision)],
        "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}],
    }
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    return {
        "apiVersion": API_VERSION,
        "kind": "Experiment",
        "metadata": {"name": space.study, "namespace": namespace},
        "spec": {
            "objective": {
                "type": objective.direction,
                "objectiveMetricName": objective.metric,
                "additionalMetricNames": [m for m in OTHER_METRICS if m != objective.metric],
                # the value of the finished trial's last line, not the best epoch's
                "metricStrategies": [{"name": objective.metric, "value": "latest"}],
            },
            "algorithm": {"algorithmName": ALGORITHMS[space.sampler.name], "algorithmSettings": settings},
            "parallelTrialCount": parallel_trials,
            "maxTrialCount": space.trials,
            "maxFailedTrialCount": max(1, space.trials // 4),
            "parameters": [parameter(key, p) for key, p in space.params.items()],
            "metricsCollectorSpec": {"collector": {"kind": "StdOut"}},
            "trialTemplate": {
                "primaryContainerName": CONTAINER,
                "trialParameters": [
                    {"name": trial_parameter_name(key), "reference": key, "description": f"params.yaml {key}"}
                    for key in space.params
                ],
                "successCondition": 'status.conditions.#(type=="Complete")#|#(status=="True")#',
                "failureCondition": 'status.conditions.#(type=="Failed")#|#(status=="True")#',
                "trialSpec": {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "spec": {
                        "backoffLimit": 0,
                        "template": {"spec": {"restartPolicy": "Never", "containers": [container]}},
                    },
                },
            },
        },
    }


# What a YAML 1.2 reader (kubectl, the API server) would take for a number or a boolean.
_LOOKS_TYPED = re.compile(r"^([-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|true|false|null|~)$", re.I)


def to_yaml(obj: dict[str, Any]) -> str:
    """YAML for Kubernetes: strings such as "1e-06" or "0.01" stay quoted strings (PyYAML
    follows YAML 1.1, where 1e-06 is not a number, and would leave it bare)."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def string(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = "'" if _LOOKS_TYPED.match(value) else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, string)
    return yaml.dump(obj, Dumper=Dumper, sort_keys=False)


def metric_lines(metrics: dict[str, float]) -> list[str]:
    """`name=value` lines, one per numeric metric, for Katib's StdOut collector."""
    return [f"{name}={json.dumps(value)}" for name, value in sorted(metrics.items())]


def run_trial(assignments: list[str]) -> list[str]:
    """In a trial pod: apply ``key=value`` params to params.yaml, run prepare, train and evaluate
    in this process, and return the metrics as `name=value` lines."""
    import yaml

    from mlpipe.core import atomic, paths
    from mlpipe.core.errors import TuningError
    from mlpipe.core.params import parse_params
    from mlpipe.ml import evaluate, prepare, train
    from mlpipe.workflows.tuning.space import parse_scalar

    raw = yaml.safe_load(paths.PARAMS_FILE.read_text(encoding="utf-8")) or {}
    for item in assignments:
        key, sep, value = item.partition("=")
        section, _, name = key.partition(".")
        if not sep or not name:
            raise TuningError(f"--set {item!r}: expected section.name=value, e.g. train.lr=0.01")
        raw.setdefault(section, {})[name] = parse_scalar(value)
    params = parse_params(raw, paths.PARAMS_FILE)
    atomic.write_text(paths.PARAMS_FILE, yaml.safe_dump(raw, sort_keys=False))
    for stage in (prepare, train, evaluate):
        stage.run(params)
    metrics: dict[str, float] = {}
    for source in (paths.TRAIN_METRICS_FILE, paths.METRICS_FILE):
        metrics |= json.loads(source.read_text(encoding="utf-8"))
    return metric_lines(metrics)

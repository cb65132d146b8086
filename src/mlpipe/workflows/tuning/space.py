"""The search space (tune.yaml): which params vary and how, the objective, budget and sampler.

Validated like params.yaml: strict, frozen models whose errors name the key; every param it
names must exist in the params schema, and every value it can propose must be valid there and in
the project's own params.yaml (a table's MLP has no model.width to search: SearchSpace.fit).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, cast

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mlpipe.core.errors import ParamsError, TuningError
from mlpipe.core.params import Params, Seed, parse_params, read_yaml, validate_config
from mlpipe.core.paths import PARAMS_FILE, TUNE_FILE

if TYPE_CHECKING:
    import optuna

Choice = bool | int | float | str
# Where each objective comes from: the test metrics of `evaluate`, or the last epoch of the
# validation curve (reports/train_metrics.json); and which way is better.
OBJECTIVE_FILES = {
    "test_accuracy": "reports/metrics.json",
    "test_macro_f1": "reports/metrics.json",
    "test_loss": "reports/metrics.json",
    "val_accuracy": "reports/train_metrics.json",
    "val_loss": "reports/train_metrics.json",
}
# The last stage a trial must run to produce each file.
PRODUCING_STAGE = {"reports/metrics.json": "evaluate", "reports/train_metrics.json": "train"}
NATURAL_DIRECTION = {
    "test_accuracy": "maximize",
    "test_macro_f1": "maximize",
    "test_loss": "minimize",
    "val_accuracy": "maximize",
    "val_loss": "minimize",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class FloatParam(_Strict):
    """A float drawn uniformly from [low, high], or log-uniformly with `log: true`."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> FloatParam:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-uniform range needs low > 0 (got {self.low})")
        return self

    def values(self) -> list[Choice]:
        return [self.low, self.high]


class IntParam(_Strict):
    """An integer from low to high inclusive, in steps of `step`."""

    type: Literal["int"]
    low: int
    high: int
    step: Annotated[int, Field(ge=1)] = 1

    @model_validator(mode="after")
    def _check(self) -> IntParam:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if (self.high - self.low) % self.step:
            raise ValueError(f"high - low ({self.high - self.low}) must be a multiple of step ({self.step})")
        return self

    def values(self) -> list[Choice]:
        return list(range(self.low, self.high + 1, self.step))


class CategoricalParam(_Strict):
    """One of a list of values."""

    type: Literal["categorical"]
    choices: Annotated[list[Choice], Field(min_length=1)]

    @field_validator("choices")
    @classmethod
    def _unique(cls, choices: list[Choice]) -> list[Choice]:
        if len({json.dumps(c) for c in choices}) != len(choices):
            raise ValueError("choices must not repeat")
        return choices

    def values(self) -> list[Choice]:
        return list(self.choices)


ParamSpace = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]
PARAM_TYPES = ("float", "int", "categorical")


class Objective(_Strict):
    """The number a trial is scored by, and whether higher or lower is better."""

    metric: Literal["test_accuracy", "test_macro_f1", "test_loss", "val_accuracy", "val_loss"]
    direction: Literal["maximize", "minimize"]

    @model_validator(mode="after")
    def _check(self) -> Objective:
        if NATURAL_DIRECTION[self.metric] != self.direction:
            raise ValueError(f"direction of {self.metric} is {NATURAL_DIRECTION[self.metric]}")
        return self


class Sampler(_Strict):
    """How Optuna proposes params: TPE (after `startup_trials` random ones), random, or grid."""

    name: Literal["tpe", "random", "grid"] = "tpe"
    seed: Seed = 0
    startup_trials: Annotated[int, Field(ge=1, le=1000)] = 5


class Pruning(_Strict):
    """Median pruning on the per-epoch validation curve: after `warmup_epochs`, a trial whose
    value is worse than the median of earlier trials at the same epoch stops."""

    enabled: bool = True
    metric: Literal["val_accuracy", "val_loss"] = "val_accuracy"
    startup_trials: Annotated[int, Field(ge=0, le=1000)] = 5
    warmup_epochs: Annotated[int, Field(ge=0, le=10_000)] = 5


class SearchSpace(_Strict):
    """All of tune.yaml."""

    # the Optuna study, the DVC experiment names (<study>-<trial>) and the Katib Experiment
    study: Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$")] = "mlpipe"
    # Chosen on the validation split: a test score that picked the params is optimistic, no
    # longer an estimate on held-out data. Trials then stop after train and never see the test split.
    objective: Objective = Objective(metric="val_accuracy", direction="maximize")
    trials: Annotated[int, Field(ge=1, le=10_000)] = 20
    sampler: Sampler = Sampler()
    pruning: Pruning = Pruning()
    params: Annotated[dict[str, ParamSpace], Field(min_length=1)]

    @field_validator("params")
    @classmethod
    def _known_params(cls, params: dict[str, ParamSpace]) -> dict[str, ParamSpace]:
        for key, space in params.items():
            section, _, name = key.partition(".")
            fields = Params.model_fields.get(section)
            if not name or fields is None or name not in fields.annotation.model_fields:  # type: ignore[union-attr]
                raise ValueError(f"{key}: not a param of params.yaml (write section.name, e.g. train.lr)")
            for value in space.values():
                try:
                    Params.model_validate({section: {name: value}})
                except ValidationError as e:
                    problem = e.errors()[0]["msg"].removeprefix("Value error, ")
                    raise ValueError(f"{key}: {value!r} is not a valid value: {problem}") from None
        return params

    @model_validator(mode="after")
    def _check(self) -> SearchSpace:
        if self.pruning.enabled and NATURAL_DIRECTION[self.pruning.metric] != self.objective.direction:
            raise ValueError(
                f"pruning.metric {self.pruning.metric} is to {NATURAL_DIRECTION[self.pruning.metric]}, "
                f"but objective.direction is {self.objective.direction}; prune on the other val_ metric"
            )
        if self.sampler.name == "grid":
            floats = [key for key, space in self.params.items() if isinstance(space, FloatParam)]
            if floats:
                raise ValueError(
                    f"sampler.name grid needs a finite grid: make {', '.join(floats)} categorical or int"
                )
        return self

    def fit(self, params: object, params_file: Path, source: Path) -> None:
        """Raise TuningError unless every value the space can propose, set into the project's
        params (``params``, as loaded from ``params_file``), validates: a trial must never fail
        on a param that does not apply to the project's data (model.width on a table)."""
        parse_params(params, params_file)
        for key, space in self.params.items():
            section, _, name = key.partition(".")
            for value in space.values():
                proposed = copy.deepcopy(params) if isinstance(params, dict) else {}
                proposed.setdefault(section, {})[name] = value
                try:
                    parse_params(proposed, params_file)
                except ParamsError as e:
                    problem = str(e).removeprefix(f"{params_file}: ").removeprefix("(top level): ")
                    raise TuningError(
                        f"{source}: params.{key}: {value!r} does not fit the project's {params_file} "
                        f"({problem}); leave {key} out of {source}, or search values that fit"
                    ) from e

    def target_stage(self) -> str:
        """The last stage a trial runs: `train` when the objective is on the validation curve."""
        return PRODUCING_STAGE[OBJECTIVE_FILES[self.objective.metric]]

    def metric_files(self) -> list[str]:
        """The metrics files a trial writes (those of the stages it runs)."""
        files = ["reports/train_metrics.json"]
        return [*files, "reports/metrics.json"] if self.target_stage() == "evaluate" else files

    def parse_assignments(self, text: str) -> dict[str, Choice]:
        """`train.lr=0.01,model.width=16` -> the values of those params (each must be in the space)."""
        chosen: dict[str, Choice] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, value = item.partition("=")
            if not sep or key not in self.params:
                raise TuningError(
                    f"--enqueue {text!r}: {item!r} is not KEY=VALUE for a param of tune.yaml "
                    f"({', '.join(self.params)})"
                )
            try:
                chosen[key] = parse_scalar(value)
            except yaml.YAMLError as e:
                raise TuningError(f"--enqueue {text!r}: {value!r} is not a YAML value") from e
        return chosen

    def grid(self) -> dict[str, list[Choice]]:
        """Every value of every param (the grid sampler's search space)."""
        return {key: space.values() for key, space in self.params.items()}

    def grid_size(self) -> int:
        size = 1
        for values in self.grid().values():
            size *= len(values)
        return size

    def suggest(self, trial: optuna.trial.BaseTrial) -> dict[str, Choice]:
        """The trial's value of every param, drawn by the study's sampler."""
        chosen: dict[str, Choice] = {}
        for key, space in self.params.items():
            if isinstance(space, FloatParam):
                chosen[key] = trial.suggest_float(key, space.low, space.high, log=space.log)
            elif isinstance(space, IntParam):
                chosen[key] = trial.suggest_int(key, space.low, space.high, step=space.step)
            else:
                # one of space.choices, none of which is None
                chosen[key] = cast(Choice, trial.suggest_categorical(key, space.choices))
        return chosen


def parse_scalar(text: str) -> Choice:
    """A command-line value: numbers as Python reads them (1e-06 is a float, unlike in YAML 1.1),
    anything else as YAML (true, 'text')."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


def parse_space(raw: object, source: Path = TUNE_FILE) -> SearchSpace:
    """Validate an already-loaded tune.yaml mapping; raise TuningError naming each bad key."""
    return validate_config(SearchSpace, raw, source, TuningError, union_tags=PARAM_TYPES)


def load_space(path: Path = TUNE_FILE) -> SearchSpace:
    """Read and validate tune.yaml, and check it fits the project's params.yaml, the one beside
    it (both live at the project's root)."""
    space = parse_space(read_yaml(path, TuningError), path)
    params_file = path.parent / PARAMS_FILE.name
    space.fit(read_yaml(params_file, ParamsError), params_file, path)
    return space

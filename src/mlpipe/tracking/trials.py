"""The train loop's link to a running study: per-epoch reports and pruning.

A no-op unless `mlpipe tune` started this process's trial, which it says in the environment
variable ``TRIAL_ENV`` (the study's storage, name, trial and pruning settings). Then the
training's MLflow run carries the study and trial as tags (``trial_tags``), every epoch's
validation metric goes to the study, and a trial that trails the others stops with
``TrialPrunedError``.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from mlpipe.core.errors import MlpipeError

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

TRIAL_ENV = "MLPIPE_TUNE_TRIAL"
STUDY_TAG = "mlpipe.tune.study"
TRIAL_TAG = "mlpipe.tune.trial"
STATE_TAG = "mlpipe.tune.state"
PRUNED_ATTR = "pruned_at_epoch"


class TrialPrunedError(MlpipeError):
    """The study stopped this trial early: its validation curve trails the earlier trials'."""


class TrialLink(BaseModel):
    """What `mlpipe tune` passes to a trial's train stage (JSON in ``TRIAL_ENV``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    storage: str
    study: str
    trial_id: int
    number: int
    # None: report every epoch but never prune
    prune_metric: Literal["val_accuracy", "val_loss"] | None
    prune_startup_trials: Annotated[int, Field(ge=0)] = 0
    prune_warmup_epochs: Annotated[int, Field(ge=0)] = 0

    def pruner(self) -> optuna.pruners.BasePruner:
        import optuna

        if self.prune_metric is None:
            return optuna.pruners.NopPruner()
        return optuna.pruners.MedianPruner(
            n_startup_trials=self.prune_startup_trials, n_warmup_steps=self.prune_warmup_epochs
        )


@functools.cache
def _trial(link: TrialLink) -> optuna.trial.Trial:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=link.study, storage=link.storage, pruner=link.pruner())
    return optuna.trial.Trial(study, link.trial_id)


def current_link() -> TrialLink | None:
    """The trial this process belongs to, if `mlpipe tune` started it."""
    raw = os.environ.get(TRIAL_ENV)
    return TrialLink.model_validate_json(raw) if raw else None


def trial_tags() -> dict[str, str]:
    """The MLflow run tags naming this process's study and trial (none outside `mlpipe tune`)."""
    link = current_link()
    return {} if link is None else {STUDY_TAG: link.study, TRIAL_TAG: str(link.number)}


def report_epoch(epoch: int, record: Mapping[str, float]) -> None:
    """Report one epoch's validation metric to the study; raise TrialPrunedError if it says stop."""
    link = current_link()
    if link is None:
        return
    trial = _trial(link)
    trial.report(float(record[link.prune_metric or "val_accuracy"]), epoch)
    if link.prune_metric is not None and trial.should_prune():
        trial.set_user_attr(PRUNED_ATTR, epoch)
        raise TrialPrunedError(
            f"trial {link.number} of study {link.study!r} pruned at epoch {epoch}: "
            f"{link.prune_metric} {record[link.prune_metric]:.4f} trails the median of earlier trials"
        )

"""`mlpipe tune` end to end: real Optuna studies whose trials are real `dvc exp run`s that log
to a real MLflow store, in a throwaway copy of the project on tiny params."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import TINY_PARAMS, TINY_TABLE_PARAMS, make_project, run, subprocess_env

pytestmark = pytest.mark.slow

TUNE_TIMEOUT = 900


def write_space(project: Path, study: str, **overrides: Any) -> None:
    space = {
        "study": study,
        "objective": {"metric": "test_accuracy", "direction": "maximize"},
        "trials": 4,
        "sampler": {"name": "random", "seed": 3},
        "pruning": {"enabled": False},
        "params": {
            "train.lr": {"type": "float", "low": 3.0e-3, "high": 5.0e-2, "log": True},
            "model.width": {"type": "categorical", "choices": [4, 8]},
        },
    }
    space.update(overrides)
    (project / "tune.yaml").write_text(yaml.safe_dump(space, sort_keys=False))


def write_lr_space(project: Path, study: str) -> None:
    """A study of train.lr alone whose trials stop after train (a val_accuracy objective)."""
    write_space(
        project,
        study,
        objective={"metric": "val_accuracy", "direction": "maximize"},
        params={"train.lr": {"type": "float", "low": 3.0e-3, "high": 5.0e-2, "log": True}},
    )


def tune(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run("mlpipe", "tune", *args, cwd=project, check=check, timeout=TUNE_TIMEOUT)


def load_study(project: Path, name: str) -> Any:
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{project / 'tune.db'}")


def trials_in(project: Path, name: str, state: str) -> list[Any]:
    from optuna.trial import TrialState

    return load_study(project, name).get_trials(states=(TrialState[state],))


def complete_count(project: Path) -> int:
    """Complete trials in tune.db, read without creating or locking anything (0 before it exists)."""
    database = project / "tune.db"
    if not database.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as connection:
            return connection.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    except sqlite3.OperationalError:  # tables not created yet, or busy
        return 0


def experiments(project: Path, prefix: str) -> dict[str, str]:
    """DVC experiments named <prefix>-<n>: name -> commit."""
    refs = run("git", "for-each-ref", "--format=%(refname) %(objectname)", "refs/exps/", cwd=project)
    found = {}
    for line in refs.stdout.splitlines():
        ref, rev = line.split()
        name = ref.rsplit("/", 1)[-1]
        if name.startswith(f"{prefix}-") and not ref.startswith("refs/exps/runs/"):
            found[name] = rev
    return found


def show_json(project: Path, rev: str, path: str) -> Any:
    return yaml.safe_load(run("git", "show", f"{rev}:{path}", cwd=project).stdout)


def mlflow_client(project: Path) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{project / 'mlruns.db'}")


def trial_runs(project: Path, study: str) -> list[Any]:
    client = mlflow_client(project)
    experiment = client.get_experiment_by_name("mlpipe")
    return client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`mlpipe.tune.study` = '{study}'"
    )


def registry_aliases(project: Path) -> dict[str, dict[str, str]]:
    return {m.name: dict(m.aliases) for m in mlflow_client(project).search_registered_models()}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project on tiny params whose pipeline ran once (a registered `candidate`), committed."""
    project = make_project(tmp_path_factory.mktemp("tune") / "project")
    run("dvc", "repro", cwd=project)
    run("git", "add", "-A", cwd=project)
    run("git", "commit", "-q", "-m", "baseline results", cwd=project)
    return project


@pytest.fixture(scope="module")
def interrupted_study(project: Path) -> dict[str, Any]:
    """`mlpipe tune --trials 4`, interrupted by SIGINT once 2 trials are complete, then rerun."""
    write_space(project, "resume")
    aliases_before = registry_aliases(project)
    process = subprocess.Popen(
        ["mlpipe", "tune", "--trials", "4"],
        cwd=project,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell without job control starts background jobs with SIGINT ignored, and Python
        # keeps it ignored: give the study the disposition a terminal's Ctrl-C meets.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + TUNE_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        if complete_count(project) >= 2:
            break
        time.sleep(0.5)
    assert process.poll() is None, "the study ended before it could be interrupted"
    os.kill(process.pid, signal.SIGINT)
    _, interrupted_err = process.communicate(timeout=120)
    before = {t.number: t.user_attrs["dvc_rev"] for t in trials_in(project, "resume", "COMPLETE")}
    resumed = tune(project, "--trials", "4")
    return {
        "interrupted_rc": process.returncode,
        "interrupted_err": interrupted_err,
        "complete_before": before,
        "resumed": resumed,
        "aliases_before": aliases_before,
        "aliases_after": registry_aliases(project),
    }


def test_sigint_stops_the_study_and_a_rerun_runs_only_the_remaining_trials(
    project: Path, interrupted_study: dict[str, Any]
) -> None:
    assert interrupted_study["interrupted_rc"] == 130, interrupted_study["interrupted_err"]
    before = interrupted_study["complete_before"]
    assert len(before) == 2
    assert f"{len(before)} trials finished, 2 to run" in interrupted_study["resumed"].stderr
    complete = {t.number: t.user_attrs["dvc_rev"] for t in trials_in(project, "resume", "COMPLETE")}
    assert len(complete) == 4
    # the trials finished before the interruption were neither rerun nor replaced
    assert {n: complete[n] for n in before} == before
    assert not trials_in(project, "resume", "RUNNING")


def test_every_trial_is_a_dvc_experiment_and_an_mlflow_run(
    project: Path, interrupted_study: dict[str, Any]
) -> None:
    complete = trials_in(project, "resume", "COMPLETE")
    exps = experiments(project, "resume")
    baseline = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert exps == {t.user_attrs["dvc_experiment"]: t.user_attrs["dvc_rev"] for t in complete}
    for trial in complete:
        rev = trial.user_attrs["dvc_rev"]
        params = show_json(project, rev, "params.yaml")
        assert params["train"]["lr"] == trial.params["train.lr"]
        assert params["model"]["width"] == trial.params["model.width"]
        # trials stop at evaluate: the package entry is still the baseline's, nothing was packaged
        stages = show_json(project, rev, "dvc.lock")["stages"]
        assert stages["package"] == baseline["package"]
        assert stages["train"] != baseline["train"]
    runs = {r.data.tags["mlpipe.tune.trial"]: r for r in trial_runs(project, "resume")}
    for trial in complete:
        tracked = runs[str(trial.number)]
        assert tracked.info.status == "FINISHED"
        assert tracked.data.tags["mlpipe.tune.state"] == "complete"
        assert float(tracked.data.params["train.lr"]) == trial.params["train.lr"]
        assert tracked.data.metrics["test_accuracy"] == trial.value


def test_the_best_trial_reported_is_the_best_experiment(
    project: Path, interrupted_study: dict[str, Any]
) -> None:
    scores = {
        name: show_json(project, rev, "reports/metrics.json")["test_accuracy"]
        for name, rev in experiments(project, "resume").items()
    }
    best = max(scores.values())
    out = interrupted_study["resumed"].stdout
    reported = next(line for line in out.splitlines() if line.startswith("best trial:"))
    name = reported.split("(")[1].split(")")[0]
    assert scores[name] == best
    assert f"test_accuracy = {best:.4f}" in reported
    assert f"dvc exp apply {name}" in out


def test_tuning_never_moves_a_registry_alias(interrupted_study: dict[str, Any]) -> None:
    assert set(interrupted_study["aliases_before"]["mlpipe-classifier"]) == {"candidate"}
    assert interrupted_study["aliases_after"] == interrupted_study["aliases_before"]


def test_a_trial_whose_learning_rate_cannot_learn_is_pruned(project: Path) -> None:
    write_space(
        project,
        "prune",
        objective={"metric": "val_accuracy", "direction": "maximize"},
        pruning={"enabled": True, "metric": "val_accuracy", "startup_trials": 1, "warmup_epochs": 1},
        params={"train.lr": {"type": "float", "low": 1.0e-7, "high": 5.0e-2, "log": True}},
    )
    tune(project, "--trials", "2", "--enqueue", "train.lr=0.02", "--enqueue", "train.lr=1.0e-7")
    (good,) = trials_in(project, "prune", "COMPLETE")
    (pruned,) = trials_in(project, "prune", "PRUNED")
    assert good.params["train.lr"] == 0.02
    assert pruned.params["train.lr"] == 1.0e-7
    # stopped before its last epoch (TINY_PARAMS train 4 epochs)
    assert pruned.user_attrs["pruned_at_epoch"] < TINY_PARAMS["train"]["epochs"]
    assert set(experiments(project, "prune")) == {f"prune-{good.number}"}
    runs = {r.data.tags["mlpipe.tune.trial"]: r for r in trial_runs(project, "prune")}
    assert runs[str(pruned.number)].info.status == "KILLED"
    assert runs[str(pruned.number)].data.tags["mlpipe.tune.state"] == "pruned"


def test_parallel_trials_each_hold_their_own_params_and_metrics(project: Path) -> None:
    write_lr_space(project, "jobs")
    tune(project, "--trials", "2", "--jobs", "2")
    complete = trials_in(project, "jobs", "COMPLETE")
    assert len(complete) == 2
    assert complete[0].params != complete[1].params
    runs = {r.data.tags["mlpipe.tune.trial"]: r for r in trial_runs(project, "jobs")}
    for trial in complete:
        rev = trial.user_attrs["dvc_rev"]
        assert show_json(project, rev, "params.yaml")["train"]["lr"] == trial.params["train.lr"]
        metrics = show_json(project, rev, "reports/train_metrics.json")
        assert metrics["val_accuracy"] == trial.value
        # the run that trained this experiment's model (same checkpoint bytes) had these params
        outs = show_json(project, rev, "dvc.lock")["stages"]["train"]["outs"]
        md5 = next(out["md5"] for out in outs if out["path"] == "models/model.pt")
        checkpoint = project / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
        tracked = runs[str(trial.number)]
        assert (
            tracked.data.tags["mlpipe.checkpoint_sha256"]
            == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
        )
        assert float(tracked.data.params["train.lr"]) == trial.params["train.lr"]
        assert tracked.data.metrics["val_accuracy"] == pytest.approx(trial.value, abs=1e-6)


def test_a_trial_the_run_cache_could_restore_still_trains_and_is_tracked(project: Path) -> None:
    write_lr_space(project, "cached")
    # an earlier experiment of the same params: its train stage is in DVC's run cache
    run("dvc", "exp", "run", "--temp", "-n", "same-params", "-S", "train.lr=0.03", "train", cwd=project)
    tune(project, "--trials", "1", "--enqueue", "train.lr=0.03")
    (trial,) = trials_in(project, "cached", "COMPLETE")
    assert trial.params["train.lr"] == 0.03
    (tracked,) = trial_runs(project, "cached")
    assert tracked.data.tags["mlpipe.tune.trial"] == str(trial.number)
    assert tracked.data.tags["mlpipe.tune.state"] == "complete"
    # the study saw the trial's own epochs, reported by its training
    assert len(trial.intermediate_values) == TINY_PARAMS["train"]["epochs"]


def test_a_trial_whose_params_equal_the_workspace_still_trains_and_is_tracked(project: Path) -> None:
    """Its stages are unchanged from the workspace's dvc.lock: DVC alone would skip them."""
    write_lr_space(project, "unchanged")
    tune(project, "--trials", "1", "--enqueue", f"train.lr={TINY_PARAMS['train']['lr']}")
    (trial,) = trials_in(project, "unchanged", "COMPLETE")
    assert trial.params["train.lr"] == TINY_PARAMS["train"]["lr"]
    (tracked,) = trial_runs(project, "unchanged")
    assert tracked.data.tags["mlpipe.tune.state"] == "complete"
    assert len(trial.intermediate_values) == TINY_PARAMS["train"]["epochs"]


def test_a_table_projects_study_searches_its_mlp(tmp_path: Path) -> None:
    """A project on the bundled table: its space searches the MLP's units, and its trial trains
    that MLP (model.width stays null, as a table needs)."""
    project = make_project(tmp_path / "penguins", TINY_TABLE_PARAMS)
    write_space(
        project,
        "table",
        objective={"metric": "val_accuracy", "direction": "maximize"},
        params={"model.hidden": {"type": "categorical", "choices": [8, 24]}},
    )
    tune(project, "--trials", "1")
    (trial,) = trials_in(project, "table", "COMPLETE")
    params = show_json(project, trial.user_attrs["dvc_rev"], "params.yaml")
    assert params["data"]["dataset"] == "penguins"
    assert (params["model"]["width"], params["model"]["hidden"]) == (None, trial.params["model.hidden"])
    assert show_json(project, trial.user_attrs["dvc_rev"], "reports/train_metrics.json")["val_accuracy"] == (
        trial.value
    )

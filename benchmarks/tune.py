"""Trial overhead and sampler comparison of `mlpipe tune`, on a throwaway clone of this repository.

1. Before: one plain `dvc exp run` (every stage, `package` included) vs its training time.
2. After: `--trials` trials of `mlpipe tune` (stages up to `evaluate`, pruning off) on the
   default params but for train.lr, with a fresh process per stage (`--no-warm`) and with the
   stages forked from the warm server (the default): each trial's wall time (Optuna's start to
   end) vs its training.
3. Where one trial's time goes: the command a warm trial runs, timed between the lines DVC and
   the stages print; and what a fresh process per stage would spend on start-up.
4. With `--compare N`: a study of N TPE trials and one of N random trials over tune.yaml's space
   (pruning as tune.yaml sets it): best test_accuracy and wall time of each.

Training time: `train_seconds` (the fit loop) and the MLflow run's duration (fit, checkpoint and
logging; the run starts after the data is loaded), both from the training's MLflow run.
Usage: python -m benchmarks.tune [--trials 3] [--compare 20 [--compare-epochs 10]]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from benchmarks.machine import describe

from mlpipe.workflows.tuning import prefork

ROOT = Path(__file__).resolve().parents[1]


def sh(*args: str, cwd: Path) -> str:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def training_time(project: Path, filter_string: str) -> tuple[float, float]:
    """(train_seconds, run duration in s) of the newest MLflow run matching ``filter_string``."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("mlpipe")
    (run,) = client.search_runs(
        [experiment.experiment_id], filter_string, order_by=["attributes.start_time DESC"], max_results=1
    )
    return run.data.metrics["train_seconds"], (run.info.end_time - run.info.start_time) / 1000


def write_space(project: Path, study: str, **changes: object) -> None:
    """The repository's tune.yaml with ``changes``, as the clone's (never an earlier study's changes)."""
    space = yaml.safe_load((ROOT / "tune.yaml").read_text())
    space.update(study=study, **changes)
    (project / "tune.yaml").write_text(yaml.safe_dump(space, sort_keys=False))


def study_rows(project: Path, study: str) -> list[tuple[int, float, float, float]]:
    """(trial, wall s, train_seconds, run duration s) of each complete trial."""
    import optuna
    from optuna.trial import TrialState

    loaded = optuna.load_study(study_name=study, storage=f"sqlite:///{project / 'tune.db'}")
    rows = []
    for trial in loaded.get_trials(states=(TrialState.COMPLETE,)):
        wall = (trial.datetime_complete - trial.datetime_start).total_seconds()
        fit, duration = training_time(
            project, f"tags.`mlpipe.tune.study` = '{study}' and tags.`mlpipe.tune.trial` = '{trial.number}'"
        )
        rows.append((trial.number, wall, fit, duration))
    return rows


# Lines a trial prints, in order, that mark where its time goes (DVC's and the stages' logs).
MILESTONES = (
    ("DVC: start-up, temporary copy, stage collection", "Running stage 'train'"),
    ("train: fork, MLflow store, data", "mlpipe.ml.train: training on"),
    ("train: fit loop", "mlpipe.ml.train: wrote"),
    ("train: exit (artifacts to MLflow); DVC saves its outputs", "Running stage 'evaluate'"),
    ("evaluate: fork, test set, plots; DVC commits the experiment", "Ran experiment"),
)


# What each process of a trial imports or opens before it does its work, in the order it does.
STARTUPS = {
    "trial's DVC process": ["import dvc.repo", "import dvc.repo.experiments"],
    "mlpipe train": [
        "import mlpipe.cli",
        "import torch",
        "import mlflow",
        "from mlpipe.tracking import runs; runs.close_abandoned_runs(runs.client())",
    ],
    "mlpipe evaluate": [
        "import mlpipe.cli",
        "import torch",
        "import sklearn.metrics",
        "import matplotlib.pyplot",
    ],
}


def startup_costs(project: Path) -> list[tuple[str, str, float]]:
    """(process, step, seconds) of each start-up step, timed in a fresh interpreter per process."""
    rows = []
    for process, steps in STARTUPS.items():
        timed = "\n".join(
            f"t = time.perf_counter()\n{step}\nprint(time.perf_counter() - t)" for step in steps
        )
        out = sh(sys.executable, "-c", f"import time\n{timed}", cwd=project)
        rows += [(process, step, float(seconds)) for step, seconds in zip(steps, out.split(), strict=True)]
    return rows


def breakdown(project: Path, name: str, assignment: str) -> list[tuple[str, float]]:
    """Seconds between the milestones of one trial's experiment, the command `mlpipe tune` runs."""
    command = [sys.executable, "-m", "mlpipe.workflows.tuning.experiment", name, "evaluate", assignment]
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert process.stdout is not None
    seen: dict[str, float] = {}
    lines = []
    for line in process.stdout:
        lines.append(line)
        for _, marker in MILESTONES:
            if marker in line and marker not in seen:
                seen[marker] = time.perf_counter() - started
    if process.wait() != 0 or len(seen) < len(MILESTONES):
        sys.exit(f"{' '.join(command)} failed or printed no milestones:\n{''.join(lines[-20:])}")
    rows, previous = [], 0.0
    for label, marker in MILESTONES:
        rows.append((label, seen[marker] - previous))
        previous = seen[marker]
    rows.append(("DVC: cleans up, exits", time.perf_counter() - started - previous))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=3, help="trials timed for the overhead")
    parser.add_argument("--compare", type=int, default=0, help="trials of each study, TPE vs random")
    parser.add_argument("--compare-epochs", type=int, help="train.epochs of the compared studies")
    args = parser.parse_args()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    with tempfile.TemporaryDirectory() as work:
        project = Path(work) / "project"
        sh("git", "clone", "--quiet", str(ROOT), str(project), cwd=ROOT)
        print(f"machine at the start: {describe()}")
        sh("dvc", "repro", "--quiet", cwd=project)
        sh("git", "commit", "--quiet", "-am", "baseline results", "--allow-empty", cwd=project)

        started = time.perf_counter()
        sh("dvc", "exp", "run", "--quiet", "-n", "before", "-S", "train.lr=0.0031", cwd=project)
        wall = time.perf_counter() - started
        fit, duration = training_time(project, "tags.`mlpipe.dvc_experiment` = 'before'")
        print("\n| run | wall | train_seconds | training run | wall / training run |")
        print("|---|---:|---:|---:|---:|")
        print(
            f"| before: `dvc exp run` (all stages) | {wall:.1f} s | {fit:.1f} s | {duration:.1f} s "
            f"| {wall / duration:.1f}× |"
        )

        # the default params but for train.lr, nudged as in the run above so that each trial trains
        lrs = [f"train.lr={0.0030 - 0.0001 * i:.4f}" for i in range(args.trials)]
        enqueued = [f"--enqueue={lr}" for lr in lrs]
        for study, flag in (("overhead-cold", "--no-warm"), ("overhead", "--warm")):
            write_space(
                project,
                study,
                pruning={"enabled": False},
                params={"train.lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True}},
            )
            sh("mlpipe", "tune", flag, "--trials", str(args.trials), *enqueued, cwd=project)
            for number, wall, fit, duration in study_rows(project, study):
                print(
                    f"| after: trial {number} of `mlpipe tune {flag}` | {wall:.1f} s | {fit:.1f} s "
                    f"| {duration:.1f} s | {wall / duration:.1f}× |"
                )

        print("\n| where one trial's time goes | seconds |")
        print("|---|---:|")
        with prefork.warm_server("portable") as socket_path:
            os.environ[prefork.ENV] = socket_path
            breakdown(project, "warm-up", "train.lr=0.0033")  # the server's imports, once per study
            rows = breakdown(project, "breakdown", "train.lr=0.0032")
            del os.environ[prefork.ENV]
        for label, seconds in rows:
            print(f"| {label} | {seconds:.1f} |")
        print(f"| total | {sum(seconds for _, seconds in rows):.1f} |")

        print("\n| process | start-up step | seconds |")
        print("|---|---|---:|")
        for process, step, seconds in startup_costs(project):
            print(f"| {process} | `{step}` | {seconds:.1f} |")

        if args.compare:
            import optuna
            from optuna.trial import TrialState

            if args.compare_epochs:
                params = yaml.safe_load((project / "params.yaml").read_text())
                params["train"]["epochs"] = args.compare_epochs
                (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
                sh("git", "commit", "--quiet", "-am", f"{args.compare_epochs} epochs", cwd=project)
            epochs = yaml.safe_load((project / "params.yaml").read_text())["train"]["epochs"]
            print(f"\nstudies of train.epochs = {epochs}:")
            print("\n| study | trials | complete / pruned | best test_accuracy | wall time |")
            print("|---|---:|---:|---:|---:|")
            outputs = {}
            for sampler in ("tpe", "random"):
                space = yaml.safe_load((ROOT / "tune.yaml").read_text())
                write_space(project, f"compare-{sampler}", sampler={**space["sampler"], "name": sampler})
                started = time.perf_counter()
                outputs[sampler] = sh("mlpipe", "tune", "--trials", str(args.compare), cwd=project)
                wall = time.perf_counter() - started
                study = optuna.load_study(
                    study_name=f"compare-{sampler}", storage=f"sqlite:///{project / 'tune.db'}"
                )
                complete, pruned = (
                    len(study.get_trials(states=(state,)))
                    for state in (TrialState.COMPLETE, TrialState.PRUNED)
                )
                print(
                    f"| {sampler} | {args.compare} | {complete} / {pruned} | {study.best_value:.4f} "
                    f"| {wall / 60:.1f} min |"
                )
            print(f"\n`mlpipe tune --trials {args.compare}` (TPE) printed:\n{outputs['tpe']}")
        print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()

"""`mlpipe tune`: an Optuna study whose trials are DVC experiments of the stages up to `evaluate`.

Each trial runs the equivalent of `dvc exp run --temp -n <study>-<number> -S ... evaluate`, with
DVC's run cache off (mlpipe.workflows.tuning.experiment), in a process group of its own (so never the
package stage: trials export and register nothing), then reads its params and metrics back from
the experiment's commit and checks the params are the ones it proposed. Parallel trials are
separate `--temp` processes, not DVC's queue (whose workers race: treeverse/dvc#10673, #10562).
The study lives in tune.db (SQLite) at the project root: a rerun continues it, with the sampler
reseeded so that it proposes no params again, and a trial that an interruption or crash cut short
is marked failed and its params are queued again, so finished trials are never repeated.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from mlpipe.core import paths, vcs
from mlpipe.core.errors import TuningError
from mlpipe.core.params import load_params, parse_params
from mlpipe.tracking.trials import PRUNED_ATTR, STATE_TAG, STUDY_TAG, TRIAL_ENV, TRIAL_TAG, TrialLink
from mlpipe.workflows.tuning import experiment, prefork
from mlpipe.workflows.tuning.space import Choice, SearchSpace

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

# Trial user attributes: where its results are, so the summary never recomputes them.
EXPERIMENT_ATTR, REV_ATTR, METRICS_ATTR, RUN_ATTR = "dvc_experiment", "dvc_rev", "metrics", "mlflow_run_id"


def storage_url(root: Path) -> str:
    return f"sqlite:///{(root / paths.TUNE_STORAGE).resolve()}"


def yaml_scalar(value: Choice) -> str:
    """``value`` as `-S` must spell it for params.yaml to read it back as the same type."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        mantissa, e, exponent = text.partition("e")
        # YAML 1.1 (PyYAML) reads 1e-05 as a string: it needs the dot
        return f"{mantissa if '.' in mantissa else mantissa + '.0'}{e}{exponent}"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value)


def experiment_name(study: str, number: int) -> str:
    return f"{study}-{number}"


@dataclass
class _Running:
    """The trial processes in flight, so an interruption can stop each of them."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    processes: dict[int, subprocess.Popen[str]] = field(default_factory=dict)
    stopping: threading.Event = field(default_factory=threading.Event)

    def stop_all(self) -> None:
        self.stopping.set()
        with self.lock:
            for process in self.processes.values():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGINT)


@dataclass(frozen=True)
class Outcome:
    """How a `mlpipe tune` invocation ended."""

    study: optuna.Study
    ran: int
    interrupted: bool


class Tuner:
    """Runs a study of ``space`` in the DVC project at ``root``."""

    def __init__(self, space: SearchSpace, root: Path, warm: bool = True) -> None:
        """``warm``: run the trials' stages as children of one mlpipe.workflows.tuning.prefork server."""
        self.space, self.root, self.warm = space, root.resolve(), warm
        self._prefork: str | None = None
        self._running = _Running()
        self._ask_lock = threading.Lock()

    # --- the study ---------------------------------------------------------------------------
    def open_study(self) -> optuna.Study:
        """Create the study, or load it and check it was made for the same objective."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = optuna.storages.RDBStorage(
            storage_url(self.root), engine_kwargs={"connect_args": {"timeout": 60}}
        )
        study = optuna.create_study(
            study_name=self.space.study,
            storage=storage,
            sampler=self._sampler(0),
            pruner=self._link(0, 0).pruner(),
            direction=self.space.objective.direction,
            load_if_exists=True,
        )
        held = len(study.get_trials(deepcopy=False))
        if held:
            # Seeded as in the first run, the sampler would propose that run's params again
            # (random, and TPE's startup trials): a resumed study repeats no proposal.
            study.sampler = self._sampler(held)
        made_for = study.user_attrs.get("objective")
        if made_for is None:
            study.set_user_attr("objective", self.space.objective.metric)
        elif made_for != self.space.objective.metric:
            raise TuningError(
                f"study {self.space.study!r} in {paths.TUNE_STORAGE} optimises {made_for}, but "
                f"{paths.TUNE_FILE} says {self.space.objective.metric}; change `study:` to start a new one"
            )
        return study

    def _sampler(self, trials_held: int) -> optuna.samplers.BaseSampler:
        """tune.yaml's sampler, for a study whose storage holds ``trials_held`` trials already."""
        import optuna

        spec = self.space.sampler
        seed = spec.seed + trials_held
        if spec.name == "grid":
            return optuna.samplers.GridSampler(self.space.grid(), seed=seed)
        if spec.name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        return optuna.samplers.TPESampler(n_startup_trials=spec.startup_trials, seed=seed)

    def _link(self, trial_id: int, number: int) -> TrialLink:
        pruning = self.space.pruning
        return TrialLink(
            storage=storage_url(self.root),
            study=self.space.study,
            trial_id=trial_id,
            number=number,
            prune_metric=pruning.metric if pruning.enabled else None,
            prune_startup_trials=pruning.startup_trials,
            prune_warmup_epochs=pruning.warmup_epochs,
        )

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """One `mlpipe tune` per project at a time: trials it finds RUNNING are then orphans."""
        lock_path = self.root / f"{paths.TUNE_STORAGE}.lock"
        with lock_path.open("w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as e:
                raise TuningError(
                    f"another `mlpipe tune` is running in {self.root} (it holds {lock_path.name})"
                ) from e
            yield

    def requeue_orphans(self, study: optuna.Study) -> None:
        """Mark trials a crash left RUNNING as failed and queue their params again."""
        from optuna.trial import TrialState

        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study.tell(trial.number, state=TrialState.FAIL)
            study.enqueue_trial(trial.params)
            log.warning("trial %d was cut short; marked failed, its params run again", trial.number)

    # --- the loop ----------------------------------------------------------------------------
    def run(self, budget: int, jobs: int, enqueue: list[dict[str, Choice]] | None = None) -> Outcome:
        """Run trials until ``budget`` of them are finished (complete or pruned), ``jobs`` at a time;
        ``enqueue``: params to try first (once per study)."""
        from optuna.trial import TrialState

        with self.exclusive():
            study = self.open_study()
            self.requeue_orphans(study)
            for chosen in enqueue or []:
                study.enqueue_trial(chosen, skip_if_exists=True)
            finished = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
            if self.space.sampler.name == "grid":
                budget = min(budget, self.space.grid_size())
            remaining = max(0, budget - finished)
            log.info(
                "study %s: %d trials finished, %d to run (%d at a time)",
                self.space.study,
                finished,
                remaining,
                jobs,
            )
            counter = {"started": 0}

            def worker() -> int:
                ran = 0
                while not self._running.stopping.is_set():
                    with self._ask_lock:
                        if counter["started"] >= remaining:
                            return ran
                        counter["started"] += 1
                        trial = study.ask()
                    self.run_trial(study, trial)
                    ran += 1
                return ran

            interrupted = False
            server = self._stage_server()
            with server, ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="trial") as pool:
                futures = [pool.submit(worker) for _ in range(min(jobs, remaining))]
                pending = set(futures)
                try:
                    while pending:
                        done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                        for future in done:
                            if future.exception() is not None:
                                self._running.stop_all()
                except KeyboardInterrupt:
                    interrupted = True
                    log.warning("interrupted: stopping the running trials")
                    self._running.stop_all()
                    wait(pending)
            errors = [f.exception() for f in futures if f.exception() is not None]
            if errors and not interrupted:
                raise errors[0]  # type: ignore[misc]
            ran = sum(f.result() for f in futures if f.exception() is None)
            return Outcome(study, ran, interrupted)

    @contextlib.contextmanager
    def _stage_server(self) -> Iterator[None]:
        """The warm server the trials' stage commands fork from, with the workspace's numerics."""
        if not self.warm:
            yield
            return
        numerics = load_params(self.root / paths.PARAMS_FILE).train.numerics
        with prefork.warm_server(numerics) as socket_path:
            self._prefork = socket_path
            try:
                yield
            finally:
                self._prefork = None

    def run_trial(self, study: optuna.Study, trial: optuna.trial.Trial) -> None:
        """Run one trial as a DVC experiment and tell the study how it ended."""
        from optuna.trial import TrialState

        chosen = self.space.suggest(trial)
        name = experiment_name(self.space.study, trial.number)
        workspace = self._check_params(chosen)
        self._remove_stale_experiment(name)
        # with the server, the experiment's DVC process is forked too, as its stages are
        runner = ["-P", "-m", prefork.__name__, "run"] if self._prefork else ["-m"]
        command = [sys.executable, *runner, experiment.__name__, name, self.space.target_stage()]
        command += [f"{key}={yaml_scalar(value)}" for key, value in chosen.items()]
        if all(workspace.get(key) == value for key, value in chosen.items()):
            command.append("--force")  # DVC would find nothing changed and train nothing
        # the train stage reopens this very trial by its storage id to report to it
        env = {**os.environ, TRIAL_ENV: self._link(trial._trial_id, trial.number).model_dump_json()}
        env.pop(prefork.ENV, None)
        if self._prefork:
            env[prefork.ENV] = self._prefork
        log.info("trial %d: %s", trial.number, " ".join(f"{k}={yaml_scalar(v)}" for k, v in chosen.items()))
        with self._running.lock:
            if self._running.stopping.is_set():
                study.tell(trial, state=TrialState.FAIL)
                study.enqueue_trial(chosen)
                return
            # a session of its own: the terminal's Ctrl-C reaches us, and we stop the trial
            process = subprocess.Popen(
                command,
                cwd=self.root,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            self._running.processes[trial.number] = process
        output, _ = process.communicate()
        with self._running.lock:
            del self._running.processes[trial.number]

        if process.returncode == 0:
            self._finish(study, trial, name, chosen)
            return
        (recorded,) = (t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
        pruned_at = recorded.user_attrs.get(PRUNED_ATTR)
        if pruned_at is not None:
            self._mark_run(trial.number, "pruned", {})
            study.tell(trial, state=TrialState.PRUNED)
            log.info("trial %d: pruned at epoch %d", trial.number, pruned_at)
            return
        study.tell(trial, state=TrialState.FAIL)
        if self._running.stopping.is_set():
            study.enqueue_trial(chosen)  # cut short by an interruption: run these params again
            log.warning("trial %d: stopped; its params run again next time", trial.number)
            return
        tail = "\n".join(output.strip().splitlines()[-15:])
        raise TuningError(f"trial {trial.number} ({name}) failed: `{' '.join(command)}`:\n{tail}")

    # --- results -----------------------------------------------------------------------------
    def _finish(self, study: optuna.Study, trial: optuna.trial.Trial, name: str, chosen: dict) -> None:
        from optuna.trial import TrialState

        rev = self._experiment_rev(name)
        if rev is None:
            raise TuningError(f"trial {trial.number}: `dvc exp run` succeeded but no experiment {name!r}")
        committed = self._params_at(rev)
        for key, value in chosen.items():
            section, _, param = key.partition(".")
            if committed.get(section, {}).get(param) != value:
                raise TuningError(
                    f"trial {trial.number}: experiment {name} ({rev[:7]}) holds {key}="
                    f"{committed.get(section, {}).get(param)!r}, not the proposed {value!r}"
                )
        metrics: dict[str, float] = {}
        for source in self.space.metric_files():
            metrics |= json.loads(vcs.git("show", f"{rev}:{source}", cwd=self.root))
        value = float(metrics[self.space.objective.metric])
        trial.set_user_attr(EXPERIMENT_ATTR, name)
        trial.set_user_attr(REV_ATTR, rev)
        trial.set_user_attr(METRICS_ATTR, metrics)
        run_id = self._mark_run(trial.number, "complete", metrics)
        if run_id:
            trial.set_user_attr(RUN_ATTR, run_id)
        if not math.isfinite(value):
            study.tell(trial, state=TrialState.FAIL)
            log.warning("trial %d: objective is %s; counted as failed", trial.number, value)
            return
        study.tell(trial, value)
        log.info("trial %d: %s %.4f (%s)", trial.number, self.space.objective.metric, value, name)

    def _check_params(self, chosen: dict[str, Choice]) -> dict[str, object]:
        """The workspace's params.yaml with the trial's values must validate before we spend time;
        returns the workspace's own values of the params in ``chosen``."""
        raw = yaml.safe_load((self.root / paths.PARAMS_FILE).read_text(encoding="utf-8")) or {}
        workspace = {}
        for key, value in chosen.items():
            section, _, param = key.partition(".")
            workspace[key] = raw.get(section, {}).get(param)
            raw.setdefault(section, {})[param] = value
        parse_params(raw, paths.PARAMS_FILE)
        return workspace

    def _params_at(self, rev: str) -> dict:
        raw = yaml.safe_load(vcs.git("show", f"{rev}:{paths.PARAMS_FILE}", cwd=self.root))
        parse_params(raw, paths.PARAMS_FILE)  # what the stages read must be what the schema reads
        return raw

    def _experiment_rev(self, name: str) -> str | None:
        refs = vcs.git("for-each-ref", "--format=%(refname) %(objectname)", "refs/exps/", cwd=self.root)
        for line in refs.splitlines():
            ref, _, rev = line.partition(" ")
            if ref.endswith(f"/{name}") and not ref.startswith("refs/exps/runs/"):
                return rev
        return None

    def _remove_stale_experiment(self, name: str) -> None:
        """An experiment of that name from a deleted tune.db would make `dvc exp run -n` fail."""
        if self._experiment_rev(name) is not None:
            log.warning("removing experiment %s left by an earlier study of the same name", name)
            vcs.dvc("exp", "remove", name, cwd=self.root)

    def _mark_run(self, number: int, state: str, metrics: dict[str, float]) -> str | None:
        """Tag the trial's MLflow run with how it ended; a pruned one is KILLED, not FAILED."""
        from mlpipe.tracking import runs

        # the trials' runs are in the project's store: `mlpipe tune` runs at its root
        client = runs.client()
        tagged = f"tags.`{STUDY_TAG}` = '{self.space.study}' and tags.`{TRIAL_TAG}` = '{number}'"
        with runs.reported("tagging the trial's run"):
            found = client.search_runs(
                [runs.experiment_id(client)],
                filter_string=tagged,
                order_by=["attributes.start_time DESC"],
                max_results=1,
            )
            if not found:
                log.warning("trial %d: no MLflow run tagged %s=%s", number, TRIAL_TAG, number)
                return None
            run_id = found[0].info.run_id
            client.set_tag(run_id, STATE_TAG, state)
            numeric = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
            if numeric:
                runs.Run(client, run_id).log_metrics(numeric)
            if state == "pruned":
                client.set_terminated(run_id, "KILLED")
            return run_id


def summary(study: optuna.Study, space: SearchSpace) -> str:
    """The best trial: its params, metrics and how to keep it; plus the study's counts."""
    from optuna.trial import TrialState

    counts = {state: len(study.get_trials(deepcopy=False, states=(state,))) for state in TrialState}
    lines = [
        f"study {space.study}: {counts[TrialState.COMPLETE]} complete, {counts[TrialState.PRUNED]} pruned, "
        f"{counts[TrialState.FAIL]} failed ({paths.TUNE_STORAGE})"
    ]
    if not counts[TrialState.COMPLETE]:
        return "\n".join([*lines, "no complete trial yet"])
    best = study.best_trial
    name = best.user_attrs[EXPERIMENT_ATTR]
    lines.append(f"best trial: {best.number} ({name}), {space.objective.metric} = {best.value:.4f}")
    lines.append("params:")
    lines += [f"  {key} = {yaml_scalar(value)}" for key, value in best.params.items()]
    lines.append("metrics:")
    lines += [f"  {key} = {value}" for key, value in sorted(best.user_attrs[METRICS_ATTR].items())]
    if space.target_stage() == "train":
        lines.append("test split: no trial saw it; the `dvc repro` below scores these params on it, once")
    lines.append(f"keep it: dvc exp apply {name} && dvc repro && git commit -am 'Tuned params ({name})'")
    lines.append("compare: dvc exp show --only-changed")
    return "\n".join(lines)

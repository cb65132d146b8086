"""One trial's DVC experiment: `dvc exp run --temp -n NAME -S ... TARGET` with the run cache off.

A trial must really run its stages: restored from DVC's run cache (its params equal those of an
earlier run, e.g. a trial cut short after training and queued again), the train stage would
neither log an MLflow run for the trial nor report its epochs to the study. `dvc exp run` has no
`--no-run-cache`, but DVC's API passes `run_cache` through to the stages, as `dvc repro` does.
`mlpipe tune` runs this module, in a process group of its own, once per trial:
``python -m mlpipe.workflows.tuning.experiment NAME TARGET [KEY=VALUE ...] [--force]``. A trial whose
params equal the workspace's is run with ``--force``: its stages are unchanged from the
workspace's dvc.lock, so DVC would skip them and the trial would train nothing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def run_experiment(
    root: Path, name: str, target: str, assignments: Sequence[str], force: bool = False
) -> None:
    """Run the stages up to ``target`` with ``assignments`` as the experiment ``name``;
    ``force``: even those whose deps did not change (params equal to the workspace's)."""
    from dvc.repo import Repo

    # _wait_for_lock: parallel trials take turns at the project's lock, as `dvc --wait-for-lock`
    with Repo(str(root), _wait_for_lock=True) as repo:
        repo.experiments.run(
            targets=[target],
            params=list(assignments),
            name=name,
            tmp_dir=True,
            run_cache=False,
            force=force,
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlpipe.workflows.tuning.experiment", description=__doc__)
    parser.add_argument("name", help="the experiment's name")
    parser.add_argument("target", help="the last stage to run")
    parser.add_argument("assignments", nargs="*", metavar="KEY=VALUE", help="params, as `-S` takes them")
    parser.add_argument("--force", action="store_true", help="run every stage, changed or not")
    args = parser.parse_args(argv)

    from dvc.exceptions import DvcException
    from dvc.ui import ui

    ui.enable()  # DVC's messages to the console, as its CLI prints them (its logging is set up on import)
    try:
        run_experiment(Path.cwd(), args.name, args.target, args.assignments, args.force)
    except DvcException as e:
        causes = []
        error: BaseException | None = e
        while error is not None:
            causes.append(str(error))
            error = error.__cause__
        print(f"ERROR: {': '.join(causes)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Running git and DVC: one place for how each is found, its time limit and what a failure reads as.

DVC runs as this interpreter's ``python -m dvc``, so it is the DVC installed beside mlpipe
whatever PATH holds. Output is captured. A command that cannot start, runs past its time limit
or exits non-zero raises CommandError, whose message names the command and ends with what it
printed last.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from mlpipe.core.errors import MlpipeError

log = logging.getLogger(__name__)

GIT = ("git",)
DVC = (sys.executable, "-m", "dvc")

# git on the local repository: a read, or a small write
GIT_TIMEOUT_S = 60
# DVC reading the project: `dvc metrics diff`, `dvc exp remove`
DVC_TIMEOUT_S = 300
# a command that trains, moves data, waits on a remote or runs hooks: `dvc repro`, `git push`
LONG_TIMEOUT_S = 6 * 3600
# the lines of a failed command's output its error quotes (the error stays one line)
QUOTED_LINES = 5


class CommandError(MlpipeError):
    """git or DVC could not start, ran past its time limit, or exited non-zero."""

    def __init__(self, message: str, returncode: int | None = None) -> None:
        super().__init__(message)
        # the exit status; None when the command did not finish
        self.returncode = returncode


def git(
    *args: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = GIT_TIMEOUT_S,
) -> str:
    """The stripped stdout of `git ARGS`; a CommandError if it failed."""
    return _run("git", GIT, args, cwd, env, timeout)


def dvc(
    *args: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = DVC_TIMEOUT_S,
) -> str:
    """The stripped stdout of `dvc ARGS`; a CommandError if it failed."""
    return _run("dvc", DVC, args, cwd, env, timeout)


def git_or_none(*args: str, cwd: Path | None = None) -> str | None:
    """The stripped stdout of `git ARGS`; None if it failed or git cannot run (outside a
    repository, or a revision that does not exist)."""
    try:
        return git(*args, cwd=cwd)
    except CommandError:
        return None


def _run(
    name: str,
    program: Sequence[str],
    args: Sequence[str],
    cwd: Path | None,
    env: Mapping[str, str] | None,
    timeout: float,
) -> str:
    shown = shlex.join([name, *args])
    log.debug("%s (in %s)", shown, cwd or Path.cwd())
    try:
        result = subprocess.run(
            [*program, *args], cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=timeout
        )
    except OSError as e:
        raise CommandError(f"cannot run `{shown}` ({e})") from e
    except subprocess.TimeoutExpired as e:
        raise CommandError(f"`{shown}` took over {timeout} s") from e
    if result.returncode != 0:
        printed = (result.stderr.strip() or result.stdout.strip()).splitlines()[-QUOTED_LINES:]
        raise CommandError(
            f"`{shown}` failed (exit {result.returncode})" + (": " + " / ".join(printed) if printed else ""),
            result.returncode,
        )
    return result.stdout.strip()

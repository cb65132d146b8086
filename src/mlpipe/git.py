"""Running git: one place for the command line, its time limit and what a failure reads as."""

from __future__ import annotations

import subprocess
from pathlib import Path

from mlpipe.errors import MlpipeError

TIMEOUT_S = 60


class GitError(MlpipeError):
    """git is missing or did not finish."""


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`git ARGS` with its output captured; its exit status is the caller's to judge."""
    try:
        return subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=TIMEOUT_S
        )
    except OSError as e:
        raise GitError(f"cannot run git ({e}); install git and run this inside the repository") from e
    except subprocess.TimeoutExpired as e:
        raise GitError(f"`git {' '.join(args)}` took over {TIMEOUT_S} s") from e


def output(*args: str, cwd: Path | None = None) -> str | None:
    """The stripped stdout of `git ARGS`; None if it failed or git cannot run."""
    try:
        result = run(*args, cwd=cwd)
    except GitError:
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def checked(*args: str, cwd: Path | None = None) -> str:
    """The stripped stdout of `git ARGS`; a GitError with git's message if it failed."""
    result = run(*args, cwd=cwd)
    if result.returncode != 0:
        raise GitError(f"`git {' '.join(args)}` failed ({result.stderr.strip()})")
    return result.stdout.strip()

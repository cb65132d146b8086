"""Where a result came from: git commit and branch, uncommitted changes, data and params hashes.

Only what the outputs really depend on goes into them (the params hash and the data hash: DVC
tracks both). The commit, the branch and the DVC experiment go to MLflow's run and
registered-version tags, where they cannot invalidate DVC's cache: the same inputs on another
branch or commit reuse the same outputs, which is how `main` restores what a merge request trained.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from mlpipe.core import paths, vcs


@dataclass(frozen=True)
class Inputs:
    """What a model's bytes depend on, besides the code: recorded in the package itself."""

    params_hash: str
    data_hash: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class Lineage:
    """Inputs plus where and how they were built (MLflow tags only)."""

    inputs: Inputs
    git_commit: str
    git_branch: str
    git_dirty: bool
    dvc_experiment: str

    def tags(self) -> dict[str, str]:
        """Flat string values, for MLflow tags."""
        values = {
            **self.inputs.to_dict(),
            "git_commit": self.git_commit,
            "git_branch": self.git_branch,
            "git_dirty": str(self.git_dirty).lower(),
            "dvc_experiment": self.dvc_experiment,
        }
        return values


def pipeline_inputs(pipeline: Path = paths.DVC_YAML) -> list[str]:
    """dvc.yaml, params.yaml and every stage dependency that is not another stage's output,
    templated from params.yaml as DVC does; for a dependency DVC tracks, the `.dvc` file git holds."""
    stages = _read_yaml(pipeline).get("stages") or {}
    params = _read_yaml(pipeline.parent / paths.PARAMS_FILE)
    produced: set[str] = set()
    deps: set[str] = set()
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            produced.update(_entry_path(entry) for entry in stage.get(kind) or [])
        deps.update(_templated(_entry_path(entry), params) for entry in stage.get("deps") or [])
    external = deps - produced
    pointers = {f"{dep}.dvc" for dep in external if (pipeline.parent / f"{dep}.dvc").is_file()}
    return sorted({paths.PARAMS_FILE.as_posix(), paths.DVC_YAML.as_posix(), *external, *pointers})


def _read_yaml(path: Path) -> dict:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _entry_path(entry: str | dict[str, object]) -> str:
    return entry if isinstance(entry, str) else next(iter(entry))


def _templated(path: str, params: dict) -> str:
    """``path`` with each ``${section.key}`` replaced by that value of params.yaml."""

    def value(match: re.Match[str]) -> str:
        found: object = params
        for key in match.group(1).strip().split("."):
            found = found.get(key) if isinstance(found, dict) else None
        return str(found)

    return re.sub(r"\$\{([^}]+)\}", value, path)


def git_commit() -> str:
    """The checked-out commit; "unknown" outside a git repository."""
    return vcs.git_or_none("rev-parse", "HEAD") or "unknown"


def git_branch() -> str:
    """The branch being built: CI's name for it (a detached checkout), else git's; "" if none."""
    for variable in ("CI_MERGE_REQUEST_SOURCE_BRANCH_NAME", "CI_COMMIT_BRANCH", "CI_COMMIT_REF_NAME"):
        if branch := os.environ.get(variable):
            return branch
    branch = vcs.git_or_none("rev-parse", "--abbrev-ref", "HEAD")
    return "" if branch in (None, "HEAD") else branch


def git_dirty(inputs: list[str]) -> bool:
    """Whether any of ``inputs`` has uncommitted changes."""
    return bool(vcs.git_or_none("status", "--porcelain", "--untracked-files=no", "--", *inputs))


def dvc_experiment() -> str:
    """The DVC experiment name under `dvc exp run` (queued or not), else an empty string."""
    return os.environ.get("DVC_EXP_NAME", "")


def data_hash(out_path: Path = paths.PREPARED_DIR, lock_path: Path = paths.DVC_LOCK) -> str:
    """The hash DVC recorded for ``out_path`` in dvc.lock (its key in the cache and remotes).

    Falls back to a SHA-256 over the directory's files when dvc.lock has no entry yet.
    """
    try:
        lock = yaml.safe_load(lock_path.read_text(encoding="utf-8")) or {}
    except (FileNotFoundError, yaml.YAMLError):
        lock = {}
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if out.get("path") == out_path.as_posix() and out.get("md5"):
                return f"md5:{out['md5']}"
    return f"sha256:{directory_digest(out_path)}"


def directory_digest(root: Path) -> str:
    """SHA-256 over a directory's relative file names and contents, in sorted order."""
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(file.relative_to(root).as_posix().encode())
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


def current(params_hash: str) -> Lineage:
    """Lineage of the working tree as it is now."""
    return Lineage(
        inputs=Inputs(params_hash=params_hash, data_hash=data_hash()),
        git_commit=git_commit(),
        git_branch=git_branch(),
        git_dirty=git_dirty(pipeline_inputs()),
        dvc_experiment=dvc_experiment(),
    )

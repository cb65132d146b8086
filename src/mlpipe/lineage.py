"""Where a result came from: git commit, uncommitted changes, data hash, DVC experiment."""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from mlpipe import paths


@dataclass(frozen=True)
class Lineage:
    """Everything needed to rebuild a model: the commit of the code and params, the data."""

    git_commit: str
    git_dirty: bool
    params_hash: str
    data_hash: str
    dvc_experiment: str

    def to_dict(self) -> dict[str, str | bool]:
        return asdict(self)


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def pipeline_inputs(pipeline: Path = paths.DVC_YAML) -> list[str]:
    """params.yaml and every stage dependency that is not another stage's output."""
    try:
        stages = (yaml.safe_load(pipeline.read_text(encoding="utf-8")) or {}).get("stages") or {}
    except (FileNotFoundError, yaml.YAMLError):
        stages = {}
    produced, deps = set(), set()
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            produced.update(_entry_path(entry) for entry in stage.get(kind) or [])
        deps.update(_entry_path(entry) for entry in stage.get("deps") or [])
    return sorted({paths.PARAMS_FILE.as_posix(), *(deps - produced)})


def _entry_path(entry: str | dict[str, object]) -> str:
    return entry if isinstance(entry, str) else next(iter(entry))


def git_commit(inputs: list[str]) -> str:
    """The last commit that changed any of ``inputs``; "unknown" outside a git repository.

    Not HEAD: commits that only record results (dvc.lock, docs) leave it unchanged, so a
    checkout of any later commit rebuilds byte-identical outputs (the package stage depends
    on every input, so it reruns whenever this value can change).
    """
    out = _git("log", "-1", "--format=%H", "--", *inputs) or _git("rev-parse", "HEAD")
    return out.strip() if out and out.strip() else "unknown"


def git_dirty(inputs: list[str]) -> bool:
    """Whether any of ``inputs`` has uncommitted changes."""
    out = _git("status", "--porcelain", "--untracked-files=no", "--", *inputs)
    return bool(out and out.strip())


def dvc_experiment() -> str:
    """The DVC experiment name under `dvc exp run`, else an empty string."""
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
    digest = hashlib.sha256()
    for file in sorted(p for p in out_path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(out_path).as_posix().encode())
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    return f"sha256:{digest.hexdigest()}"


def current(params_hash: str) -> Lineage:
    """Lineage of the working tree's pipeline inputs as they are now."""
    inputs = pipeline_inputs()
    return Lineage(
        git_commit=git_commit(inputs),
        git_dirty=git_dirty(inputs),
        params_hash=params_hash,
        data_hash=data_hash(),
        dvc_experiment=dvc_experiment(),
    )

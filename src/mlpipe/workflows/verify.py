"""`mlpipe verify`: rebuild every stage from scratch in a temporary copy of the checkout and
compare each output with dvc.lock, so a commit's claim that it rebuilds its outputs is checked."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from mlpipe.core import paths, vcs
from mlpipe.core.errors import MlpipeError


class VerifyError(MlpipeError):
    """The rebuild could not run, or its outputs differ from dvc.lock."""


@dataclass(frozen=True)
class Comparison:
    """One output: the hash dvc.lock holds and the one the rebuild produced."""

    stage: str
    path: str
    locked: str
    rebuilt: str

    @property
    def equal(self) -> bool:
        return self.locked == self.rebuilt


def locked_outputs(lock_path: Path) -> dict[tuple[str, str], str]:
    """(stage, output path) -> md5 of every output in a dvc.lock."""
    try:
        lock = yaml.safe_load(lock_path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError as e:
        raise VerifyError(f"{lock_path}: not found; run `dvc repro` and commit dvc.lock first") from e
    except yaml.YAMLError as e:
        raise VerifyError(f"{lock_path}: not valid YAML ({e})") from e
    return {
        (stage, out["path"]): out.get("md5", "")
        for stage, entry in (lock.get("stages") or {}).items()
        for out in entry.get("outs") or []
    }


def checkout_files(root: Path) -> list[str]:
    """What a clone holds: tracked files and new, unignored ones."""
    try:
        listed = vcs.git("ls-files", "-co", "--exclude-standard", cwd=root)
    except vcs.CommandError as e:
        raise VerifyError(f"{root}: not a git checkout ({e})") from e
    return [line for line in listed.splitlines() if (root / line).is_file()]


def tracked_data(root: Path, files: list[str]) -> list[str]:
    """What the checkout's ``.dvc`` files track (`dvc add`, `dvc import-url`) and the workspace
    holds: a clone gets it from DVC's cache or remote, not from git."""
    found = []
    for name in files:
        if not name.endswith(".dvc"):
            continue
        try:
            pointer = yaml.safe_load((root / name).read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise VerifyError(f"{name}: not valid YAML ({e})") from e
        for out in pointer.get("outs") or []:
            path = (Path(name).parent / str(out.get("path", ""))).as_posix()
            if out.get("path") and (root / path).exists():
                found.append(path)
    return found


def rebuild(root: Path, workdir: Path) -> Path:
    """Copy the checkout, with the data its ``.dvc`` files track, into ``workdir`` and run the
    whole pipeline there from scratch."""
    copy = workdir / "checkout"
    files = checkout_files(root)
    for name in files:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, copy / name)
    for name in tracked_data(root, files):
        if (root / name).is_dir():
            shutil.copytree(root / name, copy / name)
        else:
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, copy / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_"))}
    # A throwaway tracking store: verifying must not register anything anywhere.
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlruns.db'}"
    identity = ("-c", "user.name=mlpipe verify", "-c", "user.email=verify@mlpipe.invalid")
    try:
        vcs.git("init", "-q", cwd=copy, env=env)
        vcs.git(*identity, "add", "-A", cwd=copy, env=env)
        vcs.git(*identity, "commit", "-q", "-m", "checkout under verification", cwd=copy, env=env)
        vcs.dvc("repro", "--force", cwd=copy, env=env, timeout=vcs.LONG_TIMEOUT_S)
    except vcs.CommandError as e:
        raise VerifyError(f"in the rebuild copy: {e}") from e
    return copy


def _metrics(path: Path) -> dict[str, float]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return {k: float(v) for k, v in raw.items() if isinstance(v, int | float)}


def compare(root: Path, copy: Path) -> tuple[list[Comparison], list[str]]:
    """Every locked output against its rebuild, and a line per metric that changed."""
    locked = locked_outputs(root / paths.DVC_LOCK)
    rebuilt = locked_outputs(copy / paths.DVC_LOCK)
    rows = [
        Comparison(stage, path, md5, rebuilt.get((stage, path), "(missing)"))
        for (stage, path), md5 in sorted(locked.items())
    ]
    deltas = []
    for metrics_file in (paths.TRAIN_METRICS_FILE, paths.METRICS_FILE):
        old, new = _metrics(root / metrics_file), _metrics(copy / metrics_file)
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                deltas.append(f"{metrics_file}: {key} {old.get(key)} -> {new.get(key)}")
    return rows, deltas


def table(rows: list[Comparison]) -> str:
    """The comparison as a fixed-width table."""
    width = max([len("output"), *(len(r.path) for r in rows)])
    lines = [f"{'stage':<9} {'output':<{width}} {'locked':<36} {'rebuilt':<36} equal"]
    lines += [
        f"{r.stage:<9} {r.path:<{width}} {r.locked:<36} {r.rebuilt:<36} {'yes' if r.equal else 'NO'}"
        for r in rows
    ]
    return "\n".join(lines)


def run(root: Path = Path()) -> str:
    """Rebuild and compare; the report, or a VerifyError holding it when anything differs."""
    with tempfile.TemporaryDirectory(prefix="mlpipe-verify-") as workdir:
        copy = rebuild(root.resolve(), Path(workdir))
        rows, deltas = compare(root, copy)
    report = table(rows) + "\n" + ("\n".join(deltas) if deltas else "metrics: no change")
    if not rows:
        raise VerifyError(f"{paths.DVC_LOCK} lists no outputs to verify")
    different = [r.path for r in rows if not r.equal]
    if different:
        raise VerifyError(f"{report}\nrebuilt outputs differ from {paths.DVC_LOCK}: {', '.join(different)}")
    return report + f"\nevery output rebuilt from scratch equals {paths.DVC_LOCK}"

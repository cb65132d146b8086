"""`mlpipe runcache push`: DVC's run cache pushed whole, so another clone restores every stage.

`dvc push --run-cache` sends the run-cache entries, and `dvc push` the cached outputs, each to
its own remote (`remote:` in dvc.yaml). But when another clone restores a stage from the run
cache (`dvc repro --pull`), DVC fetches every output of the cached run, `cache: false` ones
included, from the *default* remote (DVC 3.x: the restored stage is built from the run-cache
entry, which names no remote), and `dvc push` never sends `cache: false` outputs at all. So
without more, another clone cannot restore `train` or `evaluate` and retrains them (on main: a
different model from the one the merge request's report showed). `push` does what
`dvc push --run-cache` does, then sends every output dvc.lock records, the metrics and plots
kept in git too (DVC saved their bytes in the local cache when it recorded the run), to the
remote that holds the run cache.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlpipe.core.errors import MlpipeError

if TYPE_CHECKING:
    from dvc.repo import Repo
    from dvc_data.hashfile.hash_info import HashInfo

log = logging.getLogger(__name__)


class RunCacheError(MlpipeError):
    """The run cache could not be pushed."""


@dataclass(frozen=True)
class PushResult:
    """What one push did: files transferred in all, and outputs now beside the run cache."""

    transferred: int
    outputs: int


def locked_objects(repo: Repo) -> set[HashInfo]:
    """The objects of every output dvc.lock records that the local cache holds, with the files
    of directory outputs (a ``.dir`` object alone would restore an empty listing)."""
    from dvc_data.hashfile.tree import Tree

    objects: set[HashInfo] = set()
    for stage in repo.index.stages:
        for out in stage.outs:
            hash_info = out.hash_info
            if not (hash_info and hash_info.value):
                continue
            if not out.cache.exists(hash_info.value):
                log.warning("%s: not in the local cache, not pushed (rerun `dvc repro`)", out.def_path)
                continue
            objects.add(hash_info)
            if hash_info.isdir:
                objects.update(oid for _, _, oid in Tree.load(out.cache, hash_info))
    return objects


def push(root: Path) -> PushResult:
    """`dvc push --run-cache`, then every output dvc.lock records to the default remote (where
    the run cache goes and where a restore looks)."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            transferred = repo.push(run_cache=True)
            objects = locked_objects(repo)
            result = repo.cloud.push(objects)
    except DvcException as e:
        raise RunCacheError(f"pushing the run cache failed: {e}") from e
    if result.failed:
        raise RunCacheError(f"{len(result.failed)} run-cache objects could not be pushed to the remote")
    log.info("dvc push --run-cache: %d transferred; outputs for the run cache: %d", transferred, len(objects))
    return PushResult(transferred=transferred + len(result.transferred), outputs=len(objects))

"""`mlpipe retrain`: when the imported raw data changed upstream, retrain and open a merge request.

The raw dataset (``data.source`` in params.yaml) is a DVC import of an outside location
(`dvc import-url`). Retrain runs `dvc update` on it; when the data is the same it stops there.
Otherwise it reproduces the pipeline, judges the result with the gate against the registry's
`champion`, commits the updated ``.dvc`` file, dvc.lock and the committed reports on a new branch
``retrain/data-<hash prefix>``, pushes the outputs (`mlpipe runcache push`) and the branch, and
opens a merge request whose description is `mlpipe report` against the base branch.

It never commits to the base branch and never promotes: `champion` moves only when a reviewer
merges and the base branch's pipeline runs the gate. One data version is retrained once: a
second run finds the branch (or loses the push race to the run that made it) and stops, and a
file lock keeps two runs in one checkout apart. Whatever happens, the checkout is returned to
the commit it started from.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from mlpipe.core import paths, vcs
from mlpipe.core.errors import MlpipeError
from mlpipe.core.params import Params
from mlpipe.integrations.gitlab import GitLab, MergeRequest
from mlpipe.tracking import registry
from mlpipe.workflows import gate
from mlpipe.workflows.report import Report

log = logging.getLogger(__name__)

BRANCH_PREFIX = "retrain/data-"
VERSION_LENGTH = 12
LOCK_FILE = Path(".dvc/tmp/mlpipe-retrain.lock")
# where `mlpipe report` writes by default (gitignored, with its figures beside it)
REPORT_FILE = paths.REPORTS_DIR / "report.md"


class RetrainError(MlpipeError):
    """Retraining stopped; the message names the step that failed."""


class Status(StrEnum):
    """How a retrain ended."""

    UNCHANGED = "unchanged"  # the imported data is what the base branch records
    DONE_BEFORE = "done-before"  # this data version has its branch already
    BUSY = "busy"  # another retrain holds this checkout's lock
    OPENED = "opened"  # a new branch and merge request


@dataclass(frozen=True)
class Outcome:
    """What retrain did, in one line for the user."""

    status: Status
    message: str
    branch: str | None = None
    merge_request: MergeRequest | None = None


@dataclass(frozen=True)
class Import:
    """The `.dvc` file of an imported dataset: what it imports, and the version it records."""

    dvc_file: Path
    source: str
    version: str

    @property
    def branch(self) -> str:
        return BRANCH_PREFIX + self.version

    @classmethod
    def read(cls, dvc_file: Path) -> Import:
        """Parse an import's `.dvc` file; an error says how to make one."""
        how = f"import it with `dvc import-url URL {dvc_file.with_suffix('')}` (docs/continuous-training.md)"
        try:
            stage = yaml.safe_load(dvc_file.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise RetrainError(f"{dvc_file}: not found; {how}") from e
        except yaml.YAMLError as e:
            raise RetrainError(f"{dvc_file}: not valid YAML ({e})") from e
        deps = stage.get("deps") if isinstance(stage, dict) else None
        outs = stage.get("outs") if isinstance(stage, dict) else None
        if not deps or not outs or not isinstance(deps[0], dict) or "path" not in deps[0]:
            raise RetrainError(f"{dvc_file}: tracks data but imports nothing; {how}")
        return cls(dvc_file, str(deps[0]["path"]), _version(outs[0]))


def _version(out: dict[str, Any]) -> str:
    """The data version: the prefix of the output's content hash (of its listing when it has none)."""
    digest = out.get("md5") or out.get("etag")
    if not digest:
        # version-aware imports of a cloud bucket record per-file versions instead of one hash
        digest = hashlib.sha256(yaml.safe_dump(out, sort_keys=True).encode()).hexdigest()
    return str(digest).removesuffix(".dir")[:VERSION_LENGTH]


def dvc_file(params: Params) -> Path:
    """The `.dvc` file of the dataset params.yaml trains on."""
    if not params.data.source:
        raise RetrainError(
            f"data.source in {paths.PARAMS_FILE} is null: retrain needs a dataset imported with "
            "`dvc import-url URL data/raw/<name>` and data.source: data/raw/<name>"
        )
    return Path(params.data.source.rstrip("/") + ".dvc")


@contextlib.contextmanager
def _step(step: str) -> Iterator[None]:
    """A failure inside (a command, the gate, the report, a push) becomes a RetrainError naming
    the step."""
    try:
        yield
    except MlpipeError as e:
        raise RetrainError(f"retrain failed at {step}: {e}") from e


@contextlib.contextmanager
def _lock() -> Iterator[bool]:
    """Hold this checkout's retrain lock; yields False when another run holds it."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with LOCK_FILE.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = True
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise RetrainError(f"retrain failed at taking the lock {LOCK_FILE}: {e}") from e
            locked = False
        try:
            yield locked
        finally:
            if locked:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _start_point() -> tuple[str, str]:
    """(what to check out again at the end: the branch or the commit, the commit)."""
    with _step("reading HEAD"):
        commit = vcs.git("rev-parse", "HEAD")
        branch = vcs.git("rev-parse", "--abbrev-ref", "HEAD")
    return (commit if branch == "HEAD" else branch), commit


def _require_clean() -> None:
    with _step("checking the work tree"):
        changed = vcs.git("status", "--porcelain", "--untracked-files=no")
    if changed:
        files = "; ".join(line.strip() for line in changed.splitlines())
        raise RetrainError(
            f"the work tree has uncommitted changes ({files}); retrain commits only its own: "
            "commit or stash them first"
        )


@contextlib.contextmanager
def _returning_to(start: str, branch: str) -> Iterator[None]:
    """Put the checkout back on ``start`` afterwards (files, data, outputs); drop the local
    ``branch``: it lives on the remote, or it failed."""
    try:
        yield
    finally:
        # git's hooks (`dvc install`) and `dvc checkout` may move data: they get the long limit
        try:
            vcs.git("checkout", "--quiet", "--force", start, timeout=vcs.LONG_TIMEOUT_S)
        except vcs.CommandError as e:
            log.error(
                "could not check out %s again (%s); run `git checkout -f %s && dvc checkout`", start, e, start
            )
        else:
            with contextlib.suppress(vcs.CommandError):  # absent when retrain failed before making it
                vcs.git("branch", "--quiet", "-D", branch)
            try:
                vcs.dvc("checkout", "--quiet", timeout=vcs.LONG_TIMEOUT_S)
            except vcs.CommandError as e:
                log.warning("after retrain: %s", e)


def _remote_has(remote: str, branch: str) -> bool:
    try:
        vcs.git(
            "ls-remote", "--exit-code", "--heads", remote, f"refs/heads/{branch}", timeout=vcs.LONG_TIMEOUT_S
        )
    except vcs.CommandError as e:
        if e.returncode == 2:  # --exit-code: no such branch
            return False
        raise RetrainError(f"retrain failed at reading the branches of {remote}: {e}") from e
    return True


def _push_new_branch(remote: str, branch: str) -> bool:
    """Create ``branch`` on ``remote``; False when it exists there already (another run won)."""
    ref = f"refs/heads/{branch}"
    try:
        # an empty lease: the push succeeds only if the branch does not exist on the remote yet
        vcs.git(
            "push",
            "--porcelain",
            f"--force-with-lease={ref}:",
            remote,
            f"{branch}:{ref}",
            timeout=vcs.LONG_TIMEOUT_S,
        )
    except vcs.CommandError as e:
        if _remote_has(remote, branch):
            return False
        raise RetrainError(f"retrain failed at git push of {branch} to {remote}: {e}") from e
    return True


def description(data: Import, previous: str, decision: gate.Decision, report: Report) -> str:
    """The merge request's description: what changed in the data, then the report, each figure
    named in words (a description cannot show the report's image files)."""
    return "\n".join(
        [
            f"New data in `{data.dvc_file.with_suffix('')}` (imported from `{data.source}`): "
            f"version `{previous}` → `{data.version}`.",
            "",
            f"Retrained by `mlpipe retrain`. {decision.summary()}.",
            "Merging makes the base branch's pipeline judge this model again and promote it to "
            f"`{registry.CHAMPION}`.",
            "",
            report.render(figures=None),
        ]
    )


def run(params: Params, base: str = "main", remote: str = "origin", gitlab: GitLab | None = None) -> Outcome:
    """Retrain on the imported data if it changed; ``gitlab`` None opens no merge request."""
    target = dvc_file(params)
    before = Import.read(target)
    with _lock() as locked:
        if not locked:
            return Outcome(Status.BUSY, f"another retrain holds {LOCK_FILE} in this checkout; not starting")
        _require_clean()
        start, start_commit = _start_point()
        log.info("dvc update %s (imported from %s)", target, before.source)
        with _step(f"`dvc update {target}`"):
            vcs.dvc("update", str(target), timeout=vcs.LONG_TIMEOUT_S)
        after = Import.read(target)
        if after.version == before.version:
            # a DVC that formats the file differently rewrote it: put the committed bytes back
            with _step(f"restoring {target}"):
                vcs.git("checkout", "--quiet", "--", str(target))
            return Outcome(
                Status.UNCHANGED, f"no new data: {target.with_suffix('')} is still version {before.version}"
            )
        with _returning_to(start, after.branch):
            return _retrain(params, before, after, base, remote, start_commit, gitlab)


def _retrain(
    params: Params,
    before: Import,
    after: Import,
    base: str,
    remote: str,
    start_commit: str,
    gitlab: GitLab | None,
) -> Outcome:
    branch = after.branch
    log.info("new data: %s %s -> %s", after.dvc_file, before.version, after.version)
    if _remote_has(remote, branch):
        return _done_before(branch, gitlab)
    # git's hooks (`dvc install`) may check out data or run checks: the long limit
    with _step("creating the branch"):
        vcs.git("switch", "--quiet", "--force-create", branch, timeout=vcs.LONG_TIMEOUT_S)

    log.info("dvc repro")
    with _step("`dvc repro`"):
        vcs.dvc("repro", timeout=vcs.LONG_TIMEOUT_S)
    with _step("the gate"):
        decision = gate.evaluate(params, gate.read_metrics(), registry.open_registry())
    log.info("%s", decision.summary())

    with _step("staging the results"):
        vcs.git("add", "--update")
    with _step("committing the results"):
        vcs.git(
            "commit",
            "--quiet",
            "--message",
            f"Retrain on new data in {after.dvc_file.with_suffix('')}: {before.version} -> {after.version}",
            "--message",
            f"Imported from {after.source}. {decision.summary()}.",
            timeout=vcs.LONG_TIMEOUT_S,
        )
    with _step("reading the commit"):
        committed = set(vcs.git("diff", "--name-only", start_commit, "HEAD").splitlines())
    missing = {after.dvc_file.as_posix(), paths.DVC_LOCK.as_posix()} - committed
    if missing:
        unchanged = ", ".join(sorted(missing))
        raise RetrainError(f"retrain failed at committing the results: {unchanged} unchanged")

    with _step("`mlpipe report`"):
        report = Report.build(start_commit)
        report.write(REPORT_FILE)

    from mlpipe.workflows import runcache

    log.info("pushing the outputs and the run cache")
    with _step("`mlpipe runcache push`"):
        runcache.push(Path.cwd())
    if not _push_new_branch(remote, branch):
        return _done_before(branch, gitlab)
    if gitlab is None:
        return Outcome(Status.OPENED, f"pushed {branch}; no merge request opened (no GitLab API)", branch)

    try:
        merge_request = gitlab.open_merge_request(branch) or gitlab.create_merge_request(
            branch,
            base,
            ("" if decision.passed else "Draft: ")
            + f"Retrain on new data {after.version} ({after.dvc_file.with_suffix('').name})",
            description(after, before.version, decision, report),
            labels="retrain",
        )
    except MlpipeError as e:
        # without its merge request the branch would block the next run: take it back
        try:
            vcs.git("push", "--quiet", remote, "--delete", branch, timeout=vcs.LONG_TIMEOUT_S)
        except vcs.CommandError as failed:
            log.error(
                "could not delete %s on %s (%s); delete it before the next retrain", branch, remote, failed
            )
        raise RetrainError(f"retrain failed at opening the merge request: {e}") from e
    return Outcome(
        Status.OPENED,
        f"pushed {branch} and opened merge request !{merge_request.iid}: {merge_request.web_url}",
        branch,
        merge_request,
    )


def _done_before(branch: str, gitlab: GitLab | None) -> Outcome:
    merge_request = gitlab.open_merge_request(branch) if gitlab is not None else None
    where = f"; merge request !{merge_request.iid}: {merge_request.web_url}" if merge_request else ""
    return Outcome(
        Status.DONE_BEFORE,
        f"this data version was retrained before: branch {branch} exists{where}",
        branch,
        merge_request,
    )

"""`mlpipe retrain` end to end: a project whose raw images are a real `dvc import-url` of an
"upstream" directory, a bare git repository as `origin`, local directory DVC remotes, the local
MLflow store with a `champion`, and a stand-in for GitLab's REST API (a real HTTP server on
127.0.0.1 that records the calls it receives and answers as GitLab does)."""

from __future__ import annotations

import json
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from harness.servers import threaded_http_server
from PIL import Image

from tests.conftest import TINY_PARAMS, make_project, run, subprocess_env

pytestmark = pytest.mark.slow

DATASET = "data/raw/digits-png"
PROJECT_ID = "ml/mlpipe"
TOKEN = "testing-token"
INITIAL = range(0, 300)
ADDED = range(300, 360)


@dataclass
class FakeGitLab:
    """GitLab's merge-request API for one project: what it was asked, and what it holds."""

    url: str = ""
    calls: list[dict[str, Any]] = field(default_factory=list)
    merge_requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def posts(self) -> list[dict[str, Any]]:
        return [call for call in self.calls if call["method"] == "POST"]


def gitlab_handler(state: FakeGitLab) -> type[BaseHTTPRequestHandler]:
    prefix = f"/api/v4/projects/{urllib.parse.quote(PROJECT_ID, safe='')}/merge_requests"

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: HTTPStatus, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            call = {
                "method": self.command,
                "path": url.path,
                "query": dict(urllib.parse.parse_qsl(url.query)),
                "token": self.headers.get("PRIVATE-TOKEN"),
                "content_type": self.headers.get("Content-Type"),
                "body": json.loads(raw) if raw else None,
            }
            with state.lock:
                state.calls.append(call)
                if call["token"] != TOKEN:
                    return self._answer(HTTPStatus.UNAUTHORIZED, {"message": "401 Unauthorized"})
                if url.path != prefix:
                    return self._answer(HTTPStatus.NOT_FOUND, {"message": "404 Not Found"})
                if self.command == "GET":
                    wanted = call["query"]
                    found = [
                        mr
                        for mr in state.merge_requests
                        if all(mr.get(key) == value for key, value in wanted.items())
                    ]
                    return self._answer(HTTPStatus.OK, found)
                body = call["body"] or {}
                missing = [key for key in ("source_branch", "target_branch", "title") if not body.get(key)]
                if missing:
                    return self._answer(HTTPStatus.BAD_REQUEST, {"error": f"{missing[0]} is missing"})
                if any(
                    mr["source_branch"] == body["source_branch"] and mr["state"] == "opened"
                    for mr in state.merge_requests
                ):
                    message = "Another open merge request already exists for this source branch"
                    return self._answer(HTTPStatus.CONFLICT, {"message": [message]})
                iid = len(state.merge_requests) + 1
                merge_request = {
                    **body,
                    "iid": iid,
                    "state": "opened",
                    "web_url": f"https://gitlab.example.com/{PROJECT_ID}/-/merge_requests/{iid}",
                }
                state.merge_requests.append(merge_request)
                return self._answer(HTTPStatus.CREATED, merge_request)

        do_GET = _handle  # noqa: N815 (http.server's naming)
        do_POST = _handle  # noqa: N815

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture(scope="module")
def gitlab() -> Iterator[FakeGitLab]:
    state = FakeGitLab()
    with threaded_http_server(gitlab_handler(state)) as url:
        state.url = f"{url}/api/v4"
        yield state


def write_digits(upstream: Path, indices: range) -> None:
    """sklearn's 8x8 digits as labelled PNG files: upstream/<digit>/<index>.png."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for index in indices:
        folder = upstream / str(digits.target[index])
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.round(digits.images[index] * (255 / 16)).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"{index:04d}.png")


@dataclass(frozen=True)
class Setup:
    project: Path
    upstream: Path
    origin: Path
    storage: Path
    env: dict[str, str]


def git(cwd: Path, *args: str) -> str:
    return run("git", *args, cwd=cwd).stdout.strip()


def branches(origin: Path) -> dict[str, str]:
    """The origin's branches and the commits they point at."""
    out = git(origin, "for-each-ref", "--format=%(refname:short) %(objectname)", "refs/heads")
    return dict(line.split() for line in out.splitlines())


def aliases(project: Path) -> dict[str, str]:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlruns.db'}")
    return {alias: str(v) for alias, v in client.get_registered_model("mlpipe-classifier").aliases.items()}


def retrain(setup: Setup) -> subprocess.CompletedProcess[str]:
    return run("mlpipe", "retrain", cwd=setup.project, env=setup.env, check=False)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, gitlab: FakeGitLab) -> Setup:
    """The project on main: images imported from upstream, trained, promoted, pushed."""
    root = tmp_path_factory.mktemp("retrain")
    upstream = root / "upstream"
    write_digits(upstream, INITIAL)
    overrides = {
        **TINY_PARAMS,
        "data": {**TINY_PARAMS["data"], "dataset": "imagefolder", "source": DATASET},
        # the test split changes with the data: judge against the champion, but let it pass
        "gate": {"min_test_accuracy": 0.0, "min_test_macro_f1": 0.0, "max_regression": 1.0},
    }
    project = make_project(root / "project", overrides)
    run("dvc", "import-url", str(upstream), DATASET, cwd=project)
    run("git", "add", "-A", cwd=project)
    run("git", "commit", "-q", "-m", "Import the digits images", cwd=project)
    run("dvc", "repro", cwd=project)
    run("mlpipe", "gate", "--promote", cwd=project)
    run("git", "add", "-A", cwd=project)
    run("git", "commit", "-q", "-m", "Pipeline results", cwd=project)
    run("dvc", "push", cwd=project)
    origin = root / "origin.git"
    run("git", "init", "-q", "--bare", "-b", "main", str(origin), cwd=root)
    run("git", "remote", "add", "origin", str(origin), cwd=project)
    run("git", "push", "-q", "origin", "main", cwd=project)
    env = {"CI_API_V4_URL": gitlab.url, "CI_PROJECT_ID": PROJECT_ID, "GITLAB_TOKEN": TOKEN}
    assert aliases(project) == {"candidate": "1", "champion": "1"}
    return Setup(project, upstream, origin, root / "mlpipe-storage", env)


def assert_checkout_is_main(setup: Setup, main: str) -> None:
    assert git(setup.project, "rev-parse", "--abbrev-ref", "HEAD") == "main"
    assert git(setup.project, "rev-parse", "HEAD") == main
    assert git(setup.project, "status", "--porcelain", "--untracked-files=no") == ""


def test_without_new_upstream_data_retrain_says_so_and_changes_nothing(
    setup: Setup, gitlab: FakeGitLab
) -> None:
    before = branches(setup.origin)
    dvc_file = (setup.project / f"{DATASET}.dvc").read_text()
    result = retrain(setup)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"no new data: {DATASET} is still version ")
    assert branches(setup.origin) == before
    assert (setup.project / f"{DATASET}.dvc").read_text() == dvc_file
    assert gitlab.calls == []
    assert_checkout_is_main(setup, before["main"])


def test_a_failed_retrain_names_the_step_and_leaves_main_and_the_registry_alone(
    setup: Setup, gitlab: FakeGitLab
) -> None:
    before, calls = branches(setup.origin), len(gitlab.calls)
    broken = setup.upstream / "3" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    try:
        result = retrain(setup)
    finally:
        broken.unlink()
    assert result.returncode == 1
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("mlpipe: error: retrain failed at `dvc repro`"), error
    assert "broken.png" in error
    assert branches(setup.origin) == before
    assert gitlab.calls[calls:] == []
    assert aliases(setup.project) == {"candidate": "1", "champion": "1"}
    assert_checkout_is_main(setup, before["main"])
    assert git(setup.project, "branch", "--list", "retrain/*") == ""


@dataclass(frozen=True)
class Retrained:
    main: str
    branch: str
    results: list[subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def retrained(setup: Setup) -> Retrained:
    """New images upstream, then two `mlpipe retrain` started together in the checkout."""
    main = branches(setup.origin)["main"]
    write_digits(setup.upstream, ADDED)
    args = ["mlpipe", "retrain"]
    processes = [
        subprocess.Popen(
            args,
            cwd=setup.project,
            env=subprocess_env(setup.env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(args, process.returncode, stdout, stderr))
    new = set(branches(setup.origin)) - {"main"}
    assert len(new) == 1, (new, [r.stderr for r in results])
    return Retrained(main, new.pop(), results)


def test_concurrent_runs_for_the_same_data_make_one_branch_and_one_merge_request(
    retrained: Retrained, gitlab: FakeGitLab
) -> None:
    assert [r.returncode for r in retrained.results] == [0, 0], [r.stderr for r in retrained.results]
    outputs = sorted(r.stdout.strip() for r in retrained.results)
    assert outputs[0].startswith("another retrain holds .dvc/tmp/mlpipe-retrain.lock"), outputs
    assert outputs[1] == (
        f"pushed {retrained.branch} and opened merge request !1: "
        f"https://gitlab.example.com/{PROJECT_ID}/-/merge_requests/1"
    )
    assert len(gitlab.posts()) == 1


def test_the_branch_holds_the_new_data_version_and_the_pipeline_results(
    setup: Setup, retrained: Retrained
) -> None:
    changed = git(setup.origin, "diff", "--name-only", retrained.main, retrained.branch).splitlines()
    assert {f"{DATASET}.dvc", "dvc.lock", "reports/metrics.json"} <= set(changed)
    assert git(setup.origin, "rev-parse", f"{retrained.branch}^") == retrained.main
    imported = yaml.safe_load(git(setup.origin, "show", f"{retrained.branch}:{DATASET}.dvc"))
    assert imported["deps"][0]["path"] == str(setup.upstream)
    assert imported["outs"][0]["nfiles"] == len(INITIAL) + len(ADDED)
    assert retrained.branch == "retrain/data-" + imported["outs"][0]["md5"][:12]
    lock = yaml.safe_load(git(setup.origin, "show", f"{retrained.branch}:dvc.lock"))
    old_lock = yaml.safe_load(git(setup.origin, "show", f"{retrained.main}:dvc.lock"))
    assert lock["stages"]["prepare"]["deps"] != old_lock["stages"]["prepare"]["deps"]


def test_the_outputs_and_the_run_cache_are_in_the_dvc_remotes(setup: Setup, retrained: Retrained) -> None:
    lock = yaml.safe_load(git(setup.origin, "show", f"{retrained.branch}:dvc.lock"))
    expected = {
        "models": [lock["stages"]["train"]["outs"][0]["md5"], lock["stages"]["package"]["outs"][0]["md5"]],
        "data": [lock["stages"]["prepare"]["outs"][0]["md5"]],
    }
    for remote, digests in expected.items():
        for digest in digests:
            stored = setup.storage / remote / "files" / "md5" / digest[:2] / digest[2:]
            assert stored.is_file(), f"{digest} is not in the {remote} remote"
    # DVC keeps no run cache for a stage with a `persist: true` output
    persistent = "persist: true" in (setup.project / "dvc.yaml").read_text()
    assert any((setup.storage / "data" / "runs").rglob("*")) is not persistent


def test_the_merge_request_targets_main_and_holds_the_report(
    setup: Setup, retrained: Retrained, gitlab: FakeGitLab
) -> None:
    (post,) = gitlab.posts()
    assert post["path"] == "/api/v4/projects/ml%2Fmlpipe/merge_requests"
    assert post["token"] == TOKEN
    assert post["content_type"] == "application/json"
    body = post["body"]
    version = retrained.branch.removeprefix("retrain/data-")
    assert body["source_branch"] == retrained.branch
    assert body["target_branch"] == "main"
    assert body["title"] == f"Retrain on new data {version} (digits-png)"
    assert body["remove_source_branch"] is True
    description = body["description"]
    assert f"version `{version}`" not in description.split("→")[0]
    assert f"→ `{version}`" in description
    assert "gate passed" in description
    assert "# Model report" in description
    assert "vs champion v1" in description
    assert "](report/" not in description, "relative image links do not resolve in a description"
    lookups = [call for call in gitlab.calls if call["method"] == "GET"]
    assert lookups[0]["query"] == {"state": "opened", "source_branch": retrained.branch}


def test_retrain_moves_no_promotion_alias_and_returns_the_checkout_to_main(
    setup: Setup, retrained: Retrained
) -> None:
    # the new version is registered as `candidate`, as every pipeline run registers its model;
    # only the gate on main, after the merge, moves `champion`
    assert aliases(setup.project) == {"candidate": "2", "champion": "1"}
    assert branches(setup.origin)["main"] == retrained.main
    assert_checkout_is_main(setup, retrained.main)
    assert git(setup.project, "branch", "--list", "retrain/*") == ""


def test_a_second_run_for_the_same_data_does_nothing(
    setup: Setup, retrained: Retrained, gitlab: FakeGitLab
) -> None:
    before, posts = branches(setup.origin), len(gitlab.posts())
    result = retrain(setup)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f"this data version was retrained before: branch {retrained.branch} exists; "
        f"merge request !1: https://gitlab.example.com/{PROJECT_ID}/-/merge_requests/1"
    )
    assert branches(setup.origin) == before
    assert len(gitlab.posts()) == posts
    assert_checkout_is_main(setup, retrained.main)


def test_another_checkout_finds_the_branch_and_does_not_retrain(
    setup: Setup, retrained: Retrained, gitlab: FakeGitLab
) -> None:
    # as a second CI job would: a fresh clone beside the first, sharing its DVC remotes
    clone = setup.project.parent / "clone"
    run("git", "clone", "-q", str(setup.origin), str(clone), cwd=setup.project.parent)
    before, posts = branches(setup.origin), len(gitlab.posts())
    result = run("mlpipe", "retrain", cwd=clone, env=setup.env, check=False)
    assert result.returncode == 0, result.stderr
    expected = f"this data version was retrained before: branch {retrained.branch} exists"
    assert result.stdout.startswith(expected)
    assert "dvc repro" not in result.stderr
    assert branches(setup.origin) == before
    assert len(gitlab.posts()) == posts
    assert git(clone, "status", "--porcelain", "--untracked-files=no") == ""

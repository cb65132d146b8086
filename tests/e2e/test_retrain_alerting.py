"""deploy/monitoring/alertmanager-retrain.yaml through Alertmanager's own checker (amtool): it is
a valid configuration once rendered, drift alerts reach the GitLab trigger webhook, others do not."""

from __future__ import annotations

import shutil
import string
import subprocess
import urllib.parse
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT, require

pytestmark = pytest.mark.slow

CONFIG = REPO_ROOT / "deploy/monitoring/alertmanager-retrain.yaml"
RENDERED = {
    "GITLAB_URL": "https://gitlab.example.com",
    "PROJECT_ID": "42",
    "RETRAIN_TRIGGER_TOKEN": "testing",
}


@pytest.fixture(scope="module")
def amtool() -> str:
    found = shutil.which("amtool")
    require(found is not None, "amtool (Debian's prometheus-alertmanager, .ci/tools/retrain.sh)")
    return str(found)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The file as `envsubst` renders it into the Secret (string.Template: the same ${NAME} syntax)."""
    path = tmp_path_factory.mktemp("alertmanager") / "alertmanager.yaml"
    path.write_text(string.Template(CONFIG.read_text()).substitute(RENDERED))
    return path


def amtool_out(amtool: str, *args: str) -> str:
    result = subprocess.run([amtool, *args], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"amtool {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_the_rendered_configuration_is_valid(amtool: str, rendered: Path) -> None:
    assert "SUCCESS" in amtool_out(amtool, "check-config", str(rendered))


def test_the_file_holds_no_token_only_the_variable_it_is_rendered_from() -> None:
    text = CONFIG.read_text()
    assert "token=${RETRAIN_TRIGGER_TOKEN}" in text
    assert "testing" not in text


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["alertname=MlpipeInputDrift", "model_name=digits"], "gitlab-retrain"),
        (["alertname=MlpipeClassCollapse"], "gitlab-retrain"),
        (["alertname=AnyOtherAlert", "action=retrain"], "gitlab-retrain"),
        (["alertname=MlpipeHighLatency"], "default"),
        (["alertname=MlpipeServerErrors", "severity=critical"], "default"),
    ],
)
def test_drift_alerts_and_only_they_go_to_the_retrain_webhook(
    amtool: str, rendered: Path, labels: list[str], receiver: str
) -> None:
    out = amtool_out(amtool, "config", "routes", "test", f"--config.file={rendered}", *labels)
    assert out.split() == [receiver]


def test_the_webhook_triggers_a_pipeline_on_main_with_the_reason(rendered: Path) -> None:
    config = yaml.safe_load(rendered.read_text())
    (receiver,) = [r for r in config["receivers"] if r["name"] == "gitlab-retrain"]
    (webhook,) = receiver["webhook_configs"]
    url = urllib.parse.urlsplit(webhook["url"])
    assert f"{url.scheme}://{url.netloc}{url.path}" == (
        "https://gitlab.example.com/api/v4/projects/42/trigger/pipeline"
    )
    assert dict(urllib.parse.parse_qsl(url.query)) == {
        "token": "testing",
        "ref": "main",
        "variables[RETRAIN_REASON]": "drift-alert",
    }
    assert webhook["send_resolved"] is False

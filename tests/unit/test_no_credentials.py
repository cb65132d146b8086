"""No credentials in the repository: every file a clone gets is scanned for keys and tokens.

Credentials belong in `dvc remote modify --local` (config.local, ignored by git), in
environment variables, or in CI's masked variables; placeholders such as `${AWS_SECRET_ACCESS_KEY}`,
`<your-key>` and obviously fake test values such as `testing` are fine.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, project_files

# Rules that match a credential by its shape alone.
SHAPES = {
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "Aliyun AccessKey id": re.compile(r"\bLTAI[0-9A-Za-z]{12,24}\b"),
    "private key": re.compile(r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY(?: BLOCK)?-----"),
    "GitLab token": re.compile(r"\bglpat-[0-9A-Za-z_-]{20,}"),
    "GitHub token": re.compile(r"\b(?:gh[pousr]_[0-9A-Za-z]{36,}|github_pat_[0-9A-Za-z_]{40,})\b"),
    "AWS secret access key": re.compile(
        r"(?i)secret_?access_?key[\"']?\s*[:=]\s*[\"']?[0-9A-Za-z/+]{40}(?![0-9A-Za-z/+])"
    ),
}
# `name = value` / `name: value` where the name says it holds a secret; the value decides.
ASSIGNMENT = re.compile(
    r"""(?ix)
    (?<![0-9a-z])
    (?P<name>password|passwd|secret|token|api_?key|access_?token|auth_?token|client_?secret
       |secret_?access_?key|access_?key_?id|oss_key_id|oss_key_secret|session_?token)
    ["']?\s*(?P<separator>[:=])\s*
    (?P<value>"[^"\n]*"|'[^'\n]*'|[^\s"',;#)]+)
    """
)
URL_PASSWORD = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s/:@]+:(?P<value>[^\s/@]+)@")
FAKE = re.compile(r"(?i)(?:test|testing|fake|dummy|example|placeholder|redacted)(?:[-_.][a-z0-9]+)*")


def is_placeholder(value: str) -> bool:
    """Whether ``value`` stands for a credential kept elsewhere rather than being one."""
    value = value.strip("\"'")
    return (
        not value
        or value.startswith(("$", "%(", "{{"))  # shell, compose, CI, template expansion
        or (value.startswith("<") and value.endswith(">"))
        or set(value) <= set("*.x-")
        or FAKE.fullmatch(value) is not None
    )


def literal_assignment(match: re.Match[str], suffix: str) -> bool:
    """Whether an ASSIGNMENT match gives a literal value (not a reference to one)."""
    value = match["value"]
    quoted = value[0] in "\"'"
    if suffix == ".py" and not quoted:  # `token=token`, `password=settings.password`: code
        return False
    if not quoted and match["separator"] == ":" and suffix not in (".yaml", ".yml"):
        return False  # prose such as "password: see below"
    return not is_placeholder(value)


def findings(text: str, suffix: str = "") -> list[tuple[int, str]]:
    """(line number, rule) for every credential in ``text``."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        found += [(number, rule) for rule, pattern in SHAPES.items() if pattern.search(line)]
        if any(literal_assignment(m, suffix) for m in ASSIGNMENT.finditer(line)):
            found.append((number, "secret-named value"))
        if any(not is_placeholder(m["value"]) for m in URL_PASSWORD.finditer(line)):
            found.append((number, "password in a URL"))
    return found


def test_no_tracked_file_holds_a_credential() -> None:
    problems = []
    for name in project_files():
        raw = (REPO_ROOT / name).read_bytes()
        if b"\0" in raw:  # binary (images)
            continue
        text = raw.decode("utf-8", errors="replace")
        problems += [f"{name}:{line}: {rule}" for line, rule in findings(text, Path(name).suffix)]
    assert problems == [], "credentials in tracked files:\n" + "\n".join(problems)


# The samples are assembled at run time so that this file holds none of them.
SECRET_40 = "q8Zr3VnT/2kLmW9x" + "Yp4sBc7Hd+Fg1Jt6Re5Nu0Ai"


@pytest.mark.parametrize(
    ("text", "suffix", "rule"),
    [
        ("key = " + "AKIA" + "Z7Q2MDKCJ4WX3V5B", ".txt", "AWS access key id"),
        ("ASIA" + "Z7Q2MDKCJ4WX3V5B", ".md", "AWS access key id"),
        ("aws_secret_access_key" + " = " + SECRET_40, ".ini", "AWS secret access key"),
        ('"AWS_SECRET_ACCESS_KEY"' + ': "' + SECRET_40 + '"', ".json", "AWS secret access key"),
        ("-----BEGIN RSA " + "PRIVATE KEY-----", ".pem", "private key"),
        ("-----BEGIN OPENSSH " + "PRIVATE KEY-----", "", "private key"),
        ("git clone https://oauth2:" + "glpat-" + "x7Kq2mZp9RtLw4Nc8BvY@host", ".sh", "GitLab token"),
        ("GITHUB=" + "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8", ".env", "GitHub token"),
        ("oss_key_id" + " = " + "LTAI" + "5tQw8ZkP3nVx7Ry2", "", "Aliyun AccessKey id"),
        ("password" + "=hunter2hunter2", ".env", "secret-named value"),
        ("db_password" + ' = "S3cr3t-Pa55"', ".py", "secret-named value"),
        ("token" + ": a8f5f167f44f4964e6c998dee827110c", ".yaml", "secret-named value"),
        ("    oss_key_secret" + " = Kq2mZp9RtLw4Nc8Bv", "", "secret-named value"),
        ("postgresql://mlflow:" + "S3cr3tPa55" + "@db:5432/mlflow", ".md", "password in a URL"),
    ],
)
def test_scanner_finds_credentials(text: str, suffix: str, rule: str) -> None:
    assert rule in {found for _, found in findings(text, suffix)}


@pytest.mark.parametrize(
    ("text", "suffix"),
    [
        ("export AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY}", ".sh"),
        ("dvc remote modify --local data secret_access_key <your-secret>", ".md"),
        ("secret_access_key = <your-secret-key>", ""),
        ('    "AWS_SECRET_ACCESS_KEY": "testing",', ".py"),
        ("aws_secret_access_key=S3_TEST_ENV['AWS_SECRET_ACCESS_KEY'],", ".py"),
        ("token=token, password=settings.password", ".py"),
        ("POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?set it in .env}", ".yaml"),
        ("postgresql+psycopg2://mlflow:${POSTGRES_PASSWORD}@postgres:5432/mlflow", ".yaml"),
        ("postgresql+psycopg2://mlflow@db.internal:5432/mlflow", ".md"),
        ("MLFLOW_TRACKING_PASSWORD: $MLFLOW_PASSWORD", ".yml"),
        ("The password: keep it in PGPASSWORD, never in the URI.", ".md"),
        ('monkeypatch.setenv("OSS_ACCESS_KEY_SECRET", "testing-secret")', ".py"),
        ("password = ********", ".ini"),
    ],
)
def test_scanner_leaves_placeholders_alone(text: str, suffix: str) -> None:
    assert findings(text, suffix) == []

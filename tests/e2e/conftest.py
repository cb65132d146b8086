"""Real servers for the end-to-end tests, started once per session on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness.servers import (
    mlflow_s3_env,
    mlflow_server,
    new_bucket,
    postgres_bin_dir,
    postgres_server,
    s3_server,
    sqlalchemy_url,
)

from tests.conftest import require


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`make test`), each module here runs on one worker, so the project its
    module-scoped fixtures train and serve is built once, not once per worker."""
    here = Path(__file__).parent
    for item in items:
        if item.path.parent == here:
            item.add_marker(pytest.mark.xdist_group(item.path.stem))


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server's endpoint URL; any key works (S3_TEST_ENV holds fake ones)."""
    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def postgres_uri() -> Iterator[str]:
    """A throwaway PostgreSQL server's ``postgresql://`` URI (a database of its own)."""
    require(postgres_bin_dir() is not None, "PostgreSQL server binaries")
    with postgres_server() as uri:
        yield uri


@dataclass(frozen=True)
class TrackingServer:
    """A real MLflow server: runs and registry in PostgreSQL, artifacts in an S3 bucket."""

    uri: str
    database_uri: str
    s3_endpoint: str
    bucket: str

    @property
    def client_env(self) -> dict[str, str]:
        """The environment of a pipeline run that tracks here and writes artifacts to S3."""
        return {**mlflow_s3_env(self.s3_endpoint), "MLFLOW_TRACKING_URI": self.uri}


@pytest.fixture(scope="session")
def tracking_server(s3_endpoint: str, postgres_uri: str) -> Iterator[TrackingServer]:
    """`mlflow server` as `make mlflow-server` runs it: PostgreSQL backend, S3 artifact root,
    no artifact proxying."""
    bucket = new_bucket(s3_endpoint)
    artifact_root = f"s3://{bucket}/mlartifacts"
    with mlflow_server(sqlalchemy_url(postgres_uri), artifact_root, mlflow_s3_env(s3_endpoint)) as uri:
        yield TrackingServer(uri, postgres_uri, s3_endpoint, bucket)

"""The few GitLab REST API calls `mlpipe retrain` makes: find and open merge requests.

Configured from the environment a GitLab CI job has: CI_API_V4_URL and CI_PROJECT_ID are set
by GitLab; GITLAB_TOKEN is a project access token (role Developer, scope `api`), because
CI_JOB_TOKEN may not create merge requests.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlpipe.core.errors import MlpipeError

API_URL_ENV = "CI_API_V4_URL"
PROJECT_ENV = "CI_PROJECT_ID"
TOKEN_ENV = "GITLAB_TOKEN"  # noqa: S105 (the variable's name, not a token)
TIMEOUT_S = 30


class GitLabError(MlpipeError):
    """The GitLab API is not configured, unreachable, or refused a call."""


@dataclass(frozen=True)
class MergeRequest:
    """The parts of a merge request that retrain reports."""

    iid: int
    web_url: str


@dataclass(frozen=True)
class GitLab:
    """A project's REST API: ``api_url`` is .../api/v4, ``project`` its id or URL-encoded path."""

    api_url: str
    project: str
    token: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GitLab:
        """The API of the project named by CI_API_V4_URL, CI_PROJECT_ID and GITLAB_TOKEN."""
        env = os.environ if env is None else env
        missing = [name for name in (API_URL_ENV, PROJECT_ENV, TOKEN_ENV) if not env.get(name)]
        if missing:
            raise GitLabError(
                f"{', '.join(missing)} not set: opening a merge request needs the project's API URL "
                f"({API_URL_ENV}), id ({PROJECT_ENV}) and a project access token with `api` scope "
                f"({TOKEN_ENV}); see docs/continuous-training.md"
            )
        return cls(env[API_URL_ENV].rstrip("/"), env[PROJECT_ENV], env[TOKEN_ENV])

    def _call(self, method: str, path: str, query: Mapping[str, str] | None = None, body: Any = None) -> Any:
        project = urllib.parse.quote(self.project, safe="")
        url = f"{self.api_url}/projects/{project}{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 (the configured API)
        request.add_header("PRIVATE-TOKEN", self.token)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:300]
            raise GitLabError(f"GitLab API {method} {path}: HTTP {e.code}: {detail}") from e
        except (urllib.error.URLError, OSError) as e:
            raise GitLabError(f"GitLab API at {self.api_url} is unreachable ({e})") from e
        except json.JSONDecodeError as e:
            raise GitLabError(f"GitLab API {method} {path}: the answer is not JSON ({e})") from e

    def open_merge_request(self, source_branch: str) -> MergeRequest | None:
        """The open merge request from ``source_branch``, if there is one."""
        found = self._call("GET", "/merge_requests", {"state": "opened", "source_branch": source_branch})
        if not isinstance(found, list):
            raise GitLabError(f"GitLab API GET /merge_requests: expected a list, got {type(found).__name__}")
        return _merge_request(found[0]) if found else None

    def create_merge_request(
        self, source_branch: str, target_branch: str, title: str, description: str, labels: str = ""
    ) -> MergeRequest:
        """Open a merge request; its source branch is removed when it is merged."""
        body = {
            "source_branch": source_branch,
            "target_branch": target_branch,
            "title": title,
            "description": description,
            "remove_source_branch": True,
        }
        if labels:
            body["labels"] = labels
        return _merge_request(self._call("POST", "/merge_requests", body=body))


def _merge_request(item: Any) -> MergeRequest:
    try:
        return MergeRequest(int(item["iid"]), str(item["web_url"]))
    except (TypeError, KeyError, ValueError) as e:
        raise GitLabError(f"GitLab API: a merge request without iid/web_url: {str(item)[:200]}") from e

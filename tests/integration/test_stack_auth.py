"""The stack's MLflow server and Prefect API refuse anyone without their login; with it, everything works.

On the session's stack (started once): raw HTTP requests without credentials, with a wrong password
and with the stack's own login, then MLflow's and Prefect's own clients configured from nothing but
the settings file, as `eval "$(stagetune stack up)"` leaves a shell.
"""

import base64
import os
import uuid
from collections.abc import Iterator

import httpx
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from stagetune.settings import SETTINGS_FILE_VARIABLE, export_client_settings, load_settings
from stagetune.stack import ARTIFACT_PREFIX, StackInfo
from tests.integration.helpers import FOREIGN_SETTINGS, bucket_objects

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# MLflow's REST API, UI backend, GraphQL and artifact proxy: one request of each kind.
MLFLOW_REQUESTS = {
    "search experiments": ("POST", "/api/2.0/mlflow/experiments/search", {"max_results": 1}),
    "create experiment": ("POST", "/api/2.0/mlflow/experiments/create", {"name": "intruder"}),
    "ajax search runs": ("POST", "/ajax-api/2.0/mlflow/runs/search", {"experiment_ids": ["0"]}),
    "graphql": ("POST", "/graphql", {"query": "{ __typename }"}),
    "ui": ("GET", "/", None),
    "list artifacts": ("GET", "/api/2.0/mlflow-artifacts/artifacts", None),
}


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client


@pytest.mark.parametrize("request_name", list(MLFLOW_REQUESTS))
def test_mlflow_refuses_requests_without_the_login(stack: StackInfo, http: httpx.Client, request_name: str) -> None:
    method, path, body = MLFLOW_REQUESTS[request_name]
    url = f"{stack.service('mlflow').url}{path}"
    strangers = {"no login": {}, "wrong password": _basic(stack.auth.mlflow_username, "0" * 40)}
    for who, headers in strangers.items():
        answer = http.request(method, url, json=body, headers=headers)
        assert answer.status_code == 401, (who, answer.status_code, answer.text[:300])
    owner = _basic(stack.auth.mlflow_username, stack.auth.mlflow_password)
    assert http.request(method, url, json=body, headers=owner).status_code == 200
    # The health check (what `stack up` and `stack status` poll) stays open.
    assert http.get(f"{stack.service('mlflow').url}/health").status_code == 200


def test_artifact_writes_through_the_proxy_need_the_login(stack: StackInfo, http: httpx.Client) -> None:
    key = f"auth-probe/{uuid.uuid4().hex}"
    url = f"{stack.service('mlflow').url}/api/2.0/mlflow-artifacts/artifacts/{key}"
    for who, headers in {"no login": {}, "wrong password": _basic("stagetune", "0" * 40)}.items():
        answer = http.put(f"{url}-{who.replace(' ', '-')}.txt", content=b"intruder", headers=headers)
        assert answer.status_code == 401, (who, answer.status_code)
    owner = _basic(stack.auth.mlflow_username, stack.auth.mlflow_password)
    assert http.put(f"{url}-owner.txt", content=b"owner", headers=owner).status_code == 200
    assert http.get(f"{url}-owner.txt").status_code == 401  # reading needs the login too
    assert http.get(f"{url}-owner.txt", headers=owner).content == b"owner"
    written = {name.removeprefix(f"{ARTIFACT_PREFIX}/{key}") for name in bucket_objects(stack) if key in name}
    assert written == {"-owner.txt"}  # the refused writes reached no bucket


def test_the_prefect_api_refuses_requests_without_the_auth_string(stack: StackInfo, http: httpx.Client) -> None:
    api = stack.settings["PREFECT_API_URL"]
    user, _, token = stack.auth.prefect_auth_string.partition(":")
    strangers = {"no auth string": {}, "wrong auth string": _basic(user, "0" * 40)}
    for path in ("flows/filter", "flow_runs/filter", "deployments/filter"):
        for who, headers in strangers.items():
            answer = http.post(f"{api}/{path}", json={}, headers=headers)
            assert answer.status_code == 401, (path, who, answer.status_code)
        assert http.post(f"{api}/{path}", json={}, headers=_basic(user, token)).status_code == 200
    assert http.get(f"{api}/health").status_code == 200  # `stack up` polls it


def test_clients_configured_from_the_settings_file_alone_are_let_in(stack: StackInfo) -> None:
    from prefect import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    url = stack.service("mlflow").url
    with pytest.MonkeyPatch.context() as patch:
        for name in (*FOREIGN_SETTINGS, "PREFECT_API_URL"):
            patch.setenv(name, "")  # recorded first, so the context restores whatever was there
            patch.delenv(name)
        with pytest.raises(MlflowException, match=r"401|Unauthorized"):
            MlflowClient(url).search_experiments(max_results=1)

        # What `stagetune` does when a command starts (configure_process) or a run opens its tracking.
        patch.setenv(SETTINGS_FILE_VARIABLE, str(stack.paths.env_file))
        settings = load_settings()
        exported = export_client_settings(settings, prefect_api_url=True)
        assert set(exported) == {
            "MLFLOW_TRACKING_USERNAME",
            "MLFLOW_TRACKING_PASSWORD",
            "PREFECT_API_AUTH_STRING",
            "PREFECT_API_URL",
        }
        assert isinstance(MlflowClient(url).search_experiments(max_results=1), list)
        prefect = {
            PREFECT_API_URL: os.environ["PREFECT_API_URL"],
            PREFECT_API_AUTH_STRING: os.environ["PREFECT_API_AUTH_STRING"],
        }
        with temporary_settings(prefect), get_client(sync_client=True) as client:
            assert isinstance(client.read_flows(limit=1), list)

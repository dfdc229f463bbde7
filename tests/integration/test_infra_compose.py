"""infra/docker-compose.yml, checked without a Docker engine: services, ports, health checks, env names."""

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from stagetune.settings import SETTINGS_FILE_VARIABLE, load_settings
from tests.conftest import REPO

INFRA = REPO / "infra"
_REFERENCE = re.compile(r"(?<!\$)\$\{([A-Z0-9_]+)(?::?[-?][^}]*)?\}")


def _compose() -> dict[str, Any]:
    return yaml.safe_load((INFRA / "docker-compose.yml").read_text())


def _example() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (INFRA / ".env.example").read_text().splitlines())
    return {k: v for k, v in (p for p in pairs if len(p) == 2) if not k.startswith("#")}


def test_services_health_checks_and_named_volumes() -> None:
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"minio", "createbuckets", "postgres", "mlflow", "prefect-server"}
    for name in ("minio", "postgres", "mlflow", "prefect-server"):
        assert services[name]["healthcheck"]["test"], name
    assert services["mlflow"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "createbuckets": {"condition": "service_completed_successfully"},
    }
    assert services["createbuckets"]["depends_on"] == {"minio": {"condition": "service_healthy"}}
    assert set(compose["volumes"]) == {"minio-data", "postgres-data", "mlflow-auth"}
    assert "minio-data:/data" in services["minio"]["volumes"]
    assert (INFRA / "postgres" / "init.sql").is_file()
    assert (INFRA / "mlflow" / "Dockerfile").is_file()


def test_every_published_port_is_bound_to_loopback() -> None:
    ports = [port for service in _compose()["services"].values() for port in service.get("ports", [])]
    assert len(ports) == 5
    assert all(port.startswith("127.0.0.1:") for port in ports), ports


def test_the_mlflow_server_is_lean_and_proxies_artifacts_to_minio() -> None:
    mlflow = _compose()["services"]["mlflow"]
    command = " ".join(mlflow["command"])
    assert "--workers=1" in command
    assert "--artifacts-destination=s3://${STAGETUNE_BUCKET:-stagetune}/mlartifacts" in command
    assert "postgres" not in command  # the backend store (with its password) goes through the environment
    env = mlflow["environment"]
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg://")
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"


def test_mlflow_and_prefect_refuse_callers_without_their_login() -> None:
    services = _compose()["services"]
    mlflow = services["mlflow"]
    assert "--app-name=basic-auth" in mlflow["command"]
    env = mlflow["environment"]
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == "/etc/mlflow/basic_auth.ini"
    assert "./mlflow/basic_auth.ini:/etc/mlflow/basic_auth.ini:ro" in mlflow["volumes"]
    ini = (INFRA / "mlflow" / "basic_auth.ini").read_text()
    assert "default_permission = NO_PERMISSIONS\n" in ini
    assert "admin_password" not in ini  # the password comes from the env file only
    assert "sqlite:////var/lib/mlflow-auth/" in ini
    assert "auth_cache_ttl_seconds = 300" in ini
    assert "mlflow-auth:/var/lib/mlflow-auth" in mlflow["volumes"]
    assert '"mlflow[auth]==3.17.2"' in (INFRA / "mlflow" / "Dockerfile").read_text()
    prefect = services["prefect-server"]["environment"]
    assert prefect["PREFECT_SERVER_API_AUTH_STRING"].startswith("${PREFECT_API_AUTH_STRING:?")


def test_secrets_come_only_from_the_env_file() -> None:
    text = (INFRA / "docker-compose.yml").read_text()
    referenced = set(_REFERENCE.findall(text))
    example = _example()
    assert referenced <= set(example), referenced - set(example)
    required = ("MINIO_ROOT_PASSWORD", "POSTGRES_PASSWORD", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID")
    logins = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY", "PREFECT_API_AUTH_STRING")
    for secret in (*required, *logins):
        assert f"${{{secret}:?" in text, secret  # required: compose refuses to start without it
        assert example[secret].startswith("stagetune-") or "change-me" in example[secret]
    ignored = subprocess.run(["git", "check-ignore", "-q", "infra/.env"], cwd=REPO, check=False)
    assert ignored.returncode == 0
    kept = subprocess.run(["git", "check-ignore", "-q", "infra/.env.example"], cwd=REPO, check=False)
    assert kept.returncode == 1


def test_the_env_file_doubles_as_stagetune_settings(tmp_path: Path) -> None:
    settings = load_settings({SETTINGS_FILE_VARIABLE: str(INFRA / ".env.example")})
    example = _example()
    assert settings.tracking_uri == f"http://127.0.0.1:{example['MLFLOW_PORT']}"
    assert settings.s3_endpoint_url == f"http://127.0.0.1:{example['MINIO_PORT']}"
    assert settings.optuna_storage is not None
    assert f"@127.0.0.1:{example['POSTGRES_PORT']}/optuna" in settings.optuna_storage
    assert settings.aws_access_key_id is not None
    assert settings.aws_access_key_id.get_secret_value() == example["AWS_ACCESS_KEY_ID"]
    # The same logins the services are started with are the clients' (MLflow's and Prefect's own variables).
    assert settings.mlflow_username == example["MLFLOW_TRACKING_USERNAME"]
    assert settings.mlflow_password is not None
    assert settings.mlflow_password.get_secret_value() == example["MLFLOW_TRACKING_PASSWORD"]
    assert settings.prefect_auth_string is not None
    assert settings.prefect_auth_string.get_secret_value() == example["PREFECT_API_AUTH_STRING"]
    assert settings.prefect_api_url == f"http://127.0.0.1:{example['PREFECT_PORT']}/api"
    databases = (INFRA / "postgres" / "init.sql").read_text()
    assert "CREATE DATABASE optuna;" in databases
    assert "CREATE DATABASE prefect;" in databases

"""Runtime settings from the environment (and an optional env file), read when a command starts.

Connection details and secrets live here, never in the config YAML: tracking URI, Optuna storage,
S3 endpoint and credentials, the MLflow server's login and the Prefect API's auth string.
Precedence: the config's explicit value, then these settings, then the local defaults under
`execution.workdir`.
"""

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from schemas.urls import endpoint_url_problem, storage_url_problem, tracking_uri_problem
from stagetune.errors import InputError

SETTINGS_FILE_VARIABLE = "STAGETUNE_SETTINGS_FILE"
# MLflow's and Prefect's own clients read these from the process environment, not from stagetune.
MLFLOW_USERNAME_VARIABLE = "MLFLOW_TRACKING_USERNAME"
MLFLOW_PASSWORD_VARIABLE = "MLFLOW_TRACKING_PASSWORD"
PREFECT_URL_VARIABLE = "PREFECT_API_URL"
PREFECT_AUTH_VARIABLE = "PREFECT_API_AUTH_STRING"


class RuntimeSettings(BaseSettings):
    """Where runs, studies and artifacts go, and the credentials to get there."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # `load_settings` merges the env file and the environment it is given itself: the process
        # environment must not leak in when it validates another mapping (tests, `known_secrets`).
        return (init_settings,)

    tracking_uri: str | None = Field(
        default=None, validation_alias=AliasChoices("STAGETUNE_TRACKING_URI", "MLFLOW_TRACKING_URI")
    )
    optuna_storage: str | None = Field(default=None, validation_alias=AliasChoices("STAGETUNE_OPTUNA_STORAGE"))
    s3_endpoint_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("STAGETUNE_S3_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL"),
    )
    aws_access_key_id: SecretStr | None = Field(default=None, validation_alias=AliasChoices("AWS_ACCESS_KEY_ID"))
    aws_secret_access_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("AWS_SECRET_ACCESS_KEY")
    )
    mlflow_username: str | None = Field(default=None, validation_alias=AliasChoices(MLFLOW_USERNAME_VARIABLE))
    mlflow_password: SecretStr | None = Field(default=None, validation_alias=AliasChoices(MLFLOW_PASSWORD_VARIABLE))
    prefect_api_url: str | None = Field(default=None, validation_alias=AliasChoices(PREFECT_URL_VARIABLE))
    prefect_auth_string: SecretStr | None = Field(default=None, validation_alias=AliasChoices(PREFECT_AUTH_VARIABLE))
    # Reads of s3:// data files (see stagetune.data.remote for why these defaults).
    s3_connect_timeout: float = Field(default=10.0, gt=0, validation_alias=AliasChoices("STAGETUNE_S3_CONNECT_TIMEOUT"))
    s3_read_timeout: float = Field(default=20.0, gt=0, validation_alias=AliasChoices("STAGETUNE_S3_READ_TIMEOUT"))
    s3_max_attempts: int = Field(default=3, ge=1, le=20, validation_alias=AliasChoices("STAGETUNE_S3_MAX_ATTEMPTS"))

    @field_validator("tracking_uri")
    @classmethod
    def _check_tracking(cls, value: str | None) -> str | None:
        return _checked(value, tracking_uri_problem)

    @field_validator("optuna_storage")
    @classmethod
    def _check_storage(cls, value: str | None) -> str | None:
        return _checked(value, storage_url_problem)

    @field_validator("s3_endpoint_url")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        return _checked(value, endpoint_url_problem)

    def secrets(self) -> list[str]:
        """The secret values, for masking: every SecretStr setting."""
        values = (getattr(self, name) for name in type(self).model_fields)
        return [v.get_secret_value() for v in values if isinstance(v, SecretStr) and v.get_secret_value()]

    def url_passwords(self) -> list[str]:
        """The passwords inside the URL settings (scheme://user:PASSWORD@host), for masking."""
        passwords = (
            urlsplit(url).password for url in (self.tracking_uri, self.optuna_storage, self.s3_endpoint_url) if url
        )
        return [password for password in passwords if password]


def load_settings(environ: dict[str, str] | None = None) -> RuntimeSettings:
    """Settings from `environ` (default: the process environment), over the env file it names, if any."""
    environ = dict(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    file_name = environ.get(SETTINGS_FILE_VARIABLE)
    if file_name:
        values.update(_read_env_file(Path(file_name)))
    values.update({k: v for k, v in environ.items() if v != ""})
    try:
        return RuntimeSettings.model_validate(values)
    except ValidationError as error:
        item = error.errors()[0]
        name = _variable_name(str(item["loc"][0]), values)
        source = f" (from {file_name})" if file_name and name not in environ else ""
        raise InputError(name, str(item["msg"]).removeprefix("Value error, ") + source) from None


def export_s3_environment(settings: RuntimeSettings) -> None:
    """Make the S3 endpoint and credentials visible to boto3/s3fs/MLflow in this process."""
    if settings.s3_endpoint_url:
        os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", settings.s3_endpoint_url)
        os.environ.setdefault("AWS_ENDPOINT_URL", settings.s3_endpoint_url)
    if settings.aws_access_key_id and settings.aws_secret_access_key:
        os.environ.setdefault("AWS_ACCESS_KEY_ID", settings.aws_access_key_id.get_secret_value())
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", settings.aws_secret_access_key.get_secret_value())


def export_client_settings(settings: RuntimeSettings, *, prefect_api_url: bool = False) -> list[str]:
    """Put the MLflow login and the Prefect auth string (and, asked for, the Prefect API URL) of the
    settings into this process's environment, where MLflow's and Prefect's clients read them.

    A variable the environment already sets is left alone. Call before Prefect is imported: it reads
    its settings once, at import. Returns the names of the variables it set.
    """
    wanted: dict[str, str | None] = {
        MLFLOW_USERNAME_VARIABLE: settings.mlflow_username,
        MLFLOW_PASSWORD_VARIABLE: _secret(settings.mlflow_password),
        PREFECT_AUTH_VARIABLE: _secret(settings.prefect_auth_string),
    }
    if prefect_api_url:
        wanted[PREFECT_URL_VARIABLE] = settings.prefect_api_url
    exported = [name for name, value in wanted.items() if value and not os.environ.get(name)]
    for name in exported:
        os.environ[name] = str(wanted[name])
    return exported


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def _read_env_file(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise InputError(
            SETTINGS_FILE_VARIABLE, f"settings file {str(path)!r} does not exist: fix the path or unset it"
        )
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        if not sep:
            raise InputError(SETTINGS_FILE_VARIABLE, f"line {number} of {str(path)!r} is not KEY=VALUE")
        values[key.strip()] = value.strip().strip("'\"")
    return values


def _checked(value: str | None, problem: Callable[[str], str | None]) -> str | None:
    message = None if value is None else problem(value)
    if message:
        raise ValueError(message)
    return value


def _variable_name(field: str, values: Mapping[str, Any]) -> str:
    """The environment variable a setting came from: the first of its names that is set."""
    alias = RuntimeSettings.model_fields[field].validation_alias if field in RuntimeSettings.model_fields else None
    if isinstance(alias, AliasChoices):
        names = [str(choice) for choice in alias.choices]
        return next((name for name in names if name in values), names[0])
    return field

"""The logins of the stack's servers: MLflow's basic-auth admin and the Prefect API's auth string.

Generated once, like the S3 keys, and kept in `service-auth.json` (mode 0600). MLflow's basic-auth
app keeps its users in its own SQLite database (`mlflow-auth.db`); it creates the admin user from
MLFLOW_AUTH_ADMIN_PASSWORD only while that user does not exist, so the two files live and die
together: without the logins file the database is removed and both are made anew.
"""

import json
import secrets
from dataclasses import dataclass, field

from stagetune.atomic_file import write_text_atomically
from stagetune.stack.credentials import CredentialsError
from stagetune.stack.paths import StackPaths

MLFLOW_ADMIN = "stagetune"
PREFECT_USER = "stagetune"
# Any account without a grant can do nothing; unauthenticated requests get 401 whatever this says.
MLFLOW_DEFAULT_PERMISSION = "NO_PERMISSIONS"
MLFLOW_AUTH_FUNCTION = "mlflow.server.auth:authenticate_request_basic_auth"
# Without a cache the app checks the password hash (PBKDF2) on every request, which makes each request
# many times slower (bench/README.md). One worker: a password changed through MLflow's API is seen at once.
MLFLOW_AUTH_CACHE_SECONDS = 300


@dataclass(frozen=True)
class ServiceAuth:
    """The MLflow admin login, the Flask secret of MLflow's CSRF protection, the Prefect auth string."""

    mlflow_username: str
    mlflow_password: str = field(repr=False)
    mlflow_secret_key: str = field(repr=False)
    prefect_auth_string: str = field(repr=False)

    def values(self) -> tuple[str, ...]:
        """Every secret, for masking and for tests that look for leaks."""
        return (self.mlflow_password, self.mlflow_secret_key, self.prefect_auth_string)


def generate_auth() -> ServiceAuth:
    """Fresh random secrets (40 hex characters each; MLflow wants passwords of 12 or more)."""
    return ServiceAuth(
        mlflow_username=MLFLOW_ADMIN,
        mlflow_password=secrets.token_hex(20),
        mlflow_secret_key=secrets.token_hex(32),
        prefect_auth_string=f"{PREFECT_USER}:{secrets.token_hex(20)}",
    )


def load_or_create_auth(paths: StackPaths) -> ServiceAuth:
    """The stack's logins: read back, or generated and written (mode 0600) with a fresh MLflow user database."""
    path = paths.auth_file
    if path.exists():
        path.chmod(0o600)
        return _read_auth(path.read_text(encoding="utf-8"), str(path))
    auth = generate_auth()
    paths.mlflow_auth_db.unlink(missing_ok=True)  # its admin has a password nobody knows any more
    write_text_atomically(path, json.dumps(_as_json(auth), indent=2), fsync=False, private=True)
    return auth


def read_auth(paths: StackPaths) -> ServiceAuth | None:
    """The stack's logins, or None before the first `stack up`."""
    if not paths.auth_file.is_file():
        return None
    return _read_auth(paths.auth_file.read_text(encoding="utf-8"), str(paths.auth_file))


def write_mlflow_auth_config(paths: StackPaths, auth: ServiceAuth) -> None:
    """The basic-auth app's ini (MLFLOW_AUTH_CONFIG_PATH); the password goes through the environment."""
    text = (
        "# Written by `stagetune stack up`: MLflow's basic-auth app. The admin password is passed in\n"
        "# MLFLOW_AUTH_ADMIN_PASSWORD and stored (hashed) in the database below.\n"
        "[mlflow]\n"
        f"default_permission = {MLFLOW_DEFAULT_PERMISSION}\n"
        f"database_uri = sqlite:///{paths.mlflow_auth_db}\n"
        f"admin_username = {auth.mlflow_username}\n"
        f"authorization_function = {MLFLOW_AUTH_FUNCTION}\n"
        f"auth_cache_ttl_seconds = {MLFLOW_AUTH_CACHE_SECONDS}\n"
    )
    write_text_atomically(paths.mlflow_auth_config, text, fsync=False, private=True)


def _as_json(auth: ServiceAuth) -> dict[str, dict[str, str]]:
    return {
        "mlflow": {
            "username": auth.mlflow_username,
            "password": auth.mlflow_password,
            "flask_secret_key": auth.mlflow_secret_key,
        },
        "prefect": {"auth_string": auth.prefect_auth_string},
    }


def _read_auth(text: str, where: str) -> ServiceAuth:
    try:
        data = json.loads(text)
        mlflow, prefect = data["mlflow"], data["prefect"]
        return ServiceAuth(
            mlflow_username=str(mlflow["username"]),
            mlflow_password=str(mlflow["password"]),
            mlflow_secret_key=str(mlflow["flask_secret_key"]),
            prefect_auth_string=str(prefect["auth_string"]),
        )
    except (ValueError, KeyError, TypeError) as error:
        raise CredentialsError(
            f"{where} is not the stack's logins file ({type(error).__name__}): run `stagetune stack down`, "
            "delete it to generate new logins, then `stagetune stack up`"
        ) from None

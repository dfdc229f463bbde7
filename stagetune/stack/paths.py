"""Where the local stack keeps its state: data, credentials, logs, PIDs and the settings file.

The folder lives outside the repository (default `~/.local/state/stagetune/stack`, or
`$STAGETUNE_STACK_DIR`): it holds the generated S3 credentials and server logins, so it is created with mode 0700 and
every file with a secret in it with mode 0600.
"""

import os
from dataclasses import dataclass
from pathlib import Path

from stagetune.errors import InputError

STATE_DIR_VARIABLE = "STAGETUNE_STACK_DIR"
DEFAULT_STATE_DIR = Path("~/.local/state/stagetune/stack")


@dataclass(frozen=True)
class StackPaths:
    """The files and folders of one stack's state folder."""

    root: Path

    @property
    def logs(self) -> Path:
        """One `<service>.log` per process."""
        return self.root / "logs"

    @property
    def pids(self) -> Path:
        """`<service>.pid` (the PID) and `<service>.json` (port, URL, what was started) per process."""
        return self.root / "pids"

    @property
    def seaweed_data(self) -> Path:
        """SeaweedFS's data folder (volumes, filer metadata)."""
        return self.root / "seaweed"

    @property
    def mlflow_db(self) -> Path:
        """The default MLflow backend store (SQLite)."""
        return self.root / "mlflow.db"

    @property
    def prefect_home(self) -> Path:
        """PREFECT_HOME of the stack's Prefect server (its SQLite database)."""
        return self.root / "prefect"

    @property
    def identities_file(self) -> Path:
        """SeaweedFS's S3 identities (the access key and secret): mode 0600."""
        return self.root / "s3-identities.json"

    @property
    def auth_file(self) -> Path:
        """The MLflow admin login and the Prefect API's auth string: mode 0600."""
        return self.root / "service-auth.json"

    @property
    def mlflow_auth_db(self) -> Path:
        """The users and permissions of MLflow's basic-auth app (SQLite; passwords hashed)."""
        return self.root / "mlflow-auth.db"

    @property
    def mlflow_auth_config(self) -> Path:
        """The basic-auth app's ini (MLFLOW_AUTH_CONFIG_PATH): mode 0600."""
        return self.root / "mlflow-auth.ini"

    @property
    def env_file(self) -> Path:
        """KEY=VALUE settings the pipeline reads through STAGETUNE_SETTINGS_FILE: mode 0600."""
        return self.root / "stack.env"

    def log_file(self, service: str) -> Path:
        """The log of one service."""
        return self.logs / f"{service}.log"

    def pid_file(self, service: str) -> Path:
        """The PID file of one service."""
        return self.pids / f"{service}.pid"

    def record_file(self, service: str) -> Path:
        """What was started for one service (no secrets)."""
        return self.pids / f"{service}.json"


def resolve_paths(state_dir: Path | None = None, environ: dict[str, str] | None = None) -> StackPaths:
    """`state_dir`, else `$STAGETUNE_STACK_DIR`, else `~/.local/state/stagetune/stack`; refused inside a checkout."""
    environ = dict(os.environ if environ is None else environ)
    chosen = state_dir or (Path(environ[STATE_DIR_VARIABLE]) if environ.get(STATE_DIR_VARIABLE) else None)
    root = (chosen or DEFAULT_STATE_DIR).expanduser().resolve()
    checkout = _enclosing_checkout(root)
    if checkout is not None:
        raise InputError(
            STATE_DIR_VARIABLE,
            f"{str(root)!r} is inside the git checkout {str(checkout)!r}; the stack keeps credentials there: "
            "pick a folder outside any repository (default ~/.local/state/stagetune/stack)",
        )
    return StackPaths(root)


def prepare_state(paths: StackPaths) -> None:
    """Create the state folders, readable by this user only."""
    for folder in (paths.root, paths.logs, paths.pids, paths.seaweed_data, paths.prefect_home):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    paths.root.chmod(0o700)


def _enclosing_checkout(path: Path) -> Path | None:
    for folder in (path, *path.parents):
        if (folder / ".git").exists():
            return folder
    return None

"""PostgreSQL databases for the MLflow backend store and Optuna studies (`postgresql+psycopg://...`)."""

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from schemas.urls import redact_url
from stagetune.errors import InputError

POSTGRES_SCHEMES = ("postgresql", "postgresql+psycopg", "postgresql+psycopg2")
SQL_SCHEMES = ("sqlite", *POSTGRES_SCHEMES, "mysql", "mysql+pymysql")
MAINTENANCE_DATABASE = "postgres"


@dataclass(frozen=True)
class PostgresTarget:
    """Connection details of one database named by a SQLAlchemy URL."""

    host: str
    port: int
    user: str | None
    password: str | None
    database: str

    def connect_kwargs(self, database: str | None = None) -> dict[str, Any]:
        """psycopg.connect keyword arguments, for this database or another one on the same server."""
        kwargs: dict[str, Any] = {"host": self.host, "port": self.port, "dbname": database or self.database}
        if self.user:
            kwargs["user"] = self.user
        if self.password:
            kwargs["password"] = self.password
        return kwargs


def is_postgres(url: str) -> bool:
    """Whether `url` is a PostgreSQL SQLAlchemy URL."""
    return urlsplit(url).scheme in POSTGRES_SCHEMES


def parse_postgres_url(url: str, field: str) -> PostgresTarget:
    """The parts of a `postgresql+psycopg://user[:password]@host[:port]/database` URL."""
    parts = urlsplit(url)
    database = parts.path.lstrip("/")
    if parts.scheme not in POSTGRES_SCHEMES or not database or "/" in database:
        raise InputError(
            field, f"{redact_url(url)!r} is not a PostgreSQL URL: use postgresql+psycopg://user@host:port/database"
        )
    try:
        port = parts.port or 5432
    except ValueError:
        raise InputError(field, f"{redact_url(url)!r} has an invalid port") from None
    return PostgresTarget(parts.hostname or "127.0.0.1", port, parts.username, parts.password, database)


def ensure_database(url: str, field: str = "--backend-store-uri") -> bool:
    """Create the database `url` names unless it exists (connecting to the server's `postgres` database).

    Returns True when it was created. Connection failures become an InputError naming `field`.
    """
    import psycopg
    from psycopg import sql

    target = parse_postgres_url(url, field)
    try:
        with psycopg.connect(**target.connect_kwargs(MAINTENANCE_DATABASE), autocommit=True, connect_timeout=5) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target.database,)).fetchone()
            if exists:
                return False
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target.database)))
            return True
    except psycopg.OperationalError as error:
        raise InputError(
            field, f"cannot reach PostgreSQL for {redact_url(url)!r}: {_first_line(error)}; start it or fix the URL"
        ) from None
    except psycopg.Error as error:  # e.g. no right to create databases
        raise InputError(
            field, f"cannot create the database of {redact_url(url)!r}: {_first_line(error)}; create it yourself"
        ) from None


def drop_database(url: str) -> None:
    """Drop the database `url` names (closing its connections first); nothing if it does not exist."""
    import psycopg
    from psycopg import sql

    target = parse_postgres_url(url, "url")
    with psycopg.connect(**target.connect_kwargs(MAINTENANCE_DATABASE), autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(target.database)))


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__

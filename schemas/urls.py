"""URL checks shared by the config and the runtime settings: scheme, host, port, no password in a config."""

import re
from collections.abc import Collection
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit


def refuse_credentials(value: str | None, variable: str) -> str | None:
    """`value`, unless it holds a password: config values are logged as MLflow params."""
    # Config values are logged as MLflow params: a password belongs in the environment.
    if value is not None and re.search(r"://[^/@\s]*:[^/@\s]*@", value):
        raise ValueError(f"holds a password: put the URL in the environment ({variable}) instead of the config")
    return value


TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "postgresql+psycopg", "mysql", "databricks")
STORAGE_SCHEMES = (
    "journal",
    "sqlite",
    "postgresql",
    "postgresql+psycopg",
    "postgresql+psycopg2",
    "mysql",
    "mysql+pymysql",
)
JOURNAL_PREFIX = "journal:///"
"""An Optuna journal file: `journal:///` and its path, as `sqlite:///` names a database file (four slashes for
an absolute path). Not an Optuna URL: `stagetune.search.study.open_storage` opens it as a `JournalStorage`."""


def default_storage_url(workdir: Path) -> str:
    """The Optuna storage of a run whose config and settings name none: the journal file
    `<workdir>/optuna.journal` (one machine: the pipeline and `stagetune worker`s beside it).

    A workdir that already holds `optuna.db` (runs of stagetune before the journal became the default) keeps
    SQLite, so those runs still resume: their studies live there. Nothing is created here.
    """
    workdir = workdir.absolute()
    legacy = workdir / "optuna.db"
    if legacy.exists():
        return f"sqlite:///{legacy}"
    return f"{JOURNAL_PREFIX}{workdir / 'optuna.journal'}"


def journal_path(url: str) -> Path | None:
    """The file of a `journal:///` storage URL; None for any other URL."""
    return Path(url.removeprefix(JOURNAL_PREFIX)) if url.startswith(JOURNAL_PREFIX) else None


URL_PASSWORD = re.compile(r"(?P<head>(?:\b[A-Za-z][\w+.-]*)?://[^/@:\s]*:)(?P<password>[^/@\s]+)@")
"""The password of a `scheme://user:PASSWORD@host` URL anywhere in a text (group `password`)."""


def redact_url(value: str) -> str:
    """`value` (a URL, or text holding URLs) with each `scheme://user:password@host` password replaced by ***.

    The one URL redactor: error messages, status records, log lines and reports all use it.
    """
    try:
        password = urlsplit(value).password  # a whole URL: its password may hold '@' or '/', which the pattern stops at
    except ValueError:
        password = None
    if password:
        value = value.replace(f":{password}@", ":***@", 1)
    return URL_PASSWORD.sub(lambda m: f"{m.group('head')}***@", value)


def without_credentials(uri: str) -> str:
    """`uri` without its user name and password, for a link that must work as given (`redact_url` masks instead).

    Used where the address is shown to everyone (CI job summaries); the host keeps its exact spelling.
    """
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def url_problem(value: str, schemes: Collection[str]) -> str | None:
    """Why `value` is not a usable URL with one of `schemes` (None when it is): checked before anything
    connects, so a typo fails at the start instead of after the data stage or deep inside a client."""
    if not value.strip():
        return "it is empty"
    if re.search(r"\s", redact_url(value)):  # a password may hold spaces, the rest of a URL may not
        return "it contains whitespace"
    try:
        parsed = urlsplit(value)
        port = parsed.port
    except ValueError as error:  # a port that is not a number in 0..65535, or a malformed IPv6 host
        return "its port is not a number in 1..65535" if "port" in str(error).lower() else f"it does not parse: {error}"
    scheme = parsed.scheme.lower()
    if scheme not in schemes:
        return f"its scheme {scheme!r} is not one of {', '.join(schemes)}" if scheme else "it has no scheme://"
    if scheme in ("http", "https") and (not parsed.hostname or port == 0):
        return "it names no host"
    if scheme == "sqlite" and not (value.startswith("sqlite:///") and len(value) > len("sqlite:///")):
        return "a SQLite URL is sqlite:/// (three slashes) followed by the file path"
    if scheme == "journal" and not (value.startswith(JOURNAL_PREFIX) and len(value) > len(JOURNAL_PREFIX)):
        return "a journal URL is journal:/// (three slashes) followed by the file path"
    if scheme == "journal" and value.endswith("/"):
        return "it names a folder, not the journal file"
    if scheme == "file" and not parsed.path:
        return "it names no folder"
    if scheme.startswith(("postgresql", "mysql")) and not (parsed.netloc or parsed.path or parsed.query):
        return "it names no database"
    return None


def tracking_uri_problem(value: str) -> str | None:
    """A sentence on what is wrong with an MLflow tracking URI, or None."""
    if value.strip().lower().startswith("file:"):
        # MLflow 3.17 refuses its file store ("maintenance mode") only when the first run is logged.
        return (
            f"{redact_url(value)!r} is a file:// store, which MLflow 3 no longer writes: "
            "use sqlite:///path/mlflow.db (a file beside your runs) or an MLflow server http(s)://host:port"
        )
    problem = None if value == "databricks" else url_problem(value, TRACKING_SCHEMES)
    if problem is None:
        return None
    return f"{redact_url(value)!r} is not a tracking URI, {problem}: use http(s)://host:port or sqlite:///path.db"


def storage_url_problem(value: str) -> str | None:
    """A sentence on what is wrong with an Optuna storage URL, or None."""
    problem = url_problem(value, STORAGE_SCHEMES)
    if problem is None:
        return None
    return (
        f"{redact_url(value)!r} is not an Optuna storage URL, {problem}: "
        "use journal:///path/optuna.journal (one machine), sqlite:///path.db, "
        "or postgresql+psycopg://user@host/db (several machines)"
    )


def endpoint_url_problem(value: str) -> str | None:
    """A sentence on what is wrong with an S3 endpoint URL, or None."""
    problem = url_problem(value, ("http", "https"))
    if problem is None:
        return None
    return f"{redact_url(value)!r} is not an S3 endpoint, {problem}: use http(s)://host:port"

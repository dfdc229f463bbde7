"""Helpers of the integration tests: bucket listings, MLflow artifact walks, sockets, processes, leaks."""

import base64
import json
import os
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from stagetune.stack import ARTIFACT_PREFIX, ProcessRecord, StackInfo, read_record, s3_client, stop_pid

T = TypeVar("T")

# The pipeline on tiny data, with few trials: a whole run takes seconds against the stack.
SMALL = ("coarse.n_trials=3", "refine.n_trials=2", "refine.warm_start=1", "final.max_epochs=2")
# Variables that would point the pipeline elsewhere than the settings file under test.
FOREIGN_SETTINGS = (
    "MLFLOW_TRACKING_URI",
    "STAGETUNE_TRACKING_URI",
    "STAGETUNE_OPTUNA_STORAGE",
    "STAGETUNE_S3_ENDPOINT_URL",
    "MLFLOW_S3_ENDPOINT_URL",
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "PREFECT_API_AUTH_STRING",
)


def stack_client(info: StackInfo) -> MlflowClient:
    """An MlflowClient of the stack's server, logged in as the stack's admin.

    MLflow's client reads its login from the environment: it is set there, for this test process.
    """
    os.environ["MLFLOW_TRACKING_USERNAME"] = info.auth.mlflow_username
    os.environ["MLFLOW_TRACKING_PASSWORD"] = info.auth.mlflow_password
    return MlflowClient(info.service("mlflow").url)


def bucket_objects(info: StackInfo, bucket: str = "stagetune") -> dict[str, int]:
    """Every object of the stack's bucket: key -> size."""
    client = s3_client(info.service("seaweed").url or "", info.credentials)
    objects: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        objects.update({item["Key"]: int(item["Size"]) for item in page.get("Contents", [])})
    return objects


def all_runs(client: MlflowClient, experiment_id: str) -> list[Run]:
    """Every run of the experiment (parents, stages, trials)."""
    return list(client.search_runs([experiment_id], max_results=5000))


def walk_artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> Iterator[tuple[str, int]]:
    """(path, size) of every artifact file of a run, recursively."""
    for item in client.list_artifacts(run_id, path):
        if item.is_dir:
            yield from walk_artifacts(client, run_id, item.path)
        else:
            yield item.path, int(item.file_size or 0)


def artifact_key(artifact_uri: str, path: str = "") -> str:
    """The bucket key behind a proxied `mlflow-artifacts:/...` URI (the server writes under mlartifacts/)."""
    parts = urlsplit(artifact_uri)
    assert parts.scheme == "mlflow-artifacts", artifact_uri
    base = f"{ARTIFACT_PREFIX}/{parts.path.strip('/')}"
    return f"{base}/{path}" if path else base


def referenced_artifacts(client: MlflowClient, experiment_id: str) -> dict[str, int]:
    """Bucket key -> size of every artifact file that any run of the experiment lists."""
    referenced: dict[str, int] = {}
    for run in all_runs(client, experiment_id):
        for path, size in walk_artifacts(client, run.info.run_id):
            referenced[artifact_key(run.info.artifact_uri, path)] = size
    return referenced


def stop_service(info: StackInfo, service: str) -> ProcessRecord:
    """Stop one service of the stack by its PID (as `stack down` would); its record stays, so `stack up` restarts it."""
    record = read_record(info.paths, service)
    assert record is not None, f"{service} has no PID record"
    assert stop_pid(record.pid, timeout_s=15.0), f"{service} (PID {record.pid}) was not running"
    return record


def wait_for(check: Callable[[], T], timeout_s: float, what: str, poll_s: float = 0.5) -> T:
    """Poll `check()` until it returns something truthy; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not (found := check()):
        assert time.monotonic() < deadline, f"no {what} after {timeout_s:.0f} s"
        time.sleep(poll_s)
    return found


def listening_sockets(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket `pid` listens on (from /proc: IPv4 and IPv6)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found: set[tuple[str, int]] = set()
    for table in ("tcp", "tcp6"):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                address, port = fields[1].split(":")
                found.add((_address(address), int(port, 16)))
    return found


def processes_in(folder: Path) -> set[int]:
    """PIDs of live (non-zombie) processes whose working directory is `folder` (the stack's state dir)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if Path(os.readlink(entry / "cwd")) == folder and "Z" not in _state(entry):
                found.add(int(entry.name))
        except OSError:
            continue
    return found


def leaks(secrets: tuple[str, ...], blobs: dict[str, bytes]) -> list[str]:
    """Names of the blobs that contain any of the secret values."""
    needles = [s.encode() for s in secrets if s]
    return [name for name, blob in blobs.items() if any(needle in blob for needle in needles)]


def mlflow_blobs(client: MlflowClient, experiment_id: str, download_to: Path) -> dict[str, bytes]:
    """Params, tags, metric names, run names and every artifact (downloaded) of the experiment's runs."""
    blobs: dict[str, bytes] = {}
    for run in all_runs(client, experiment_id):
        run_id = run.info.run_id
        data: dict[str, Any] = {
            "params": run.data.params,
            "tags": run.data.tags,
            "metrics": sorted(run.data.metrics),
            "name": run.info.run_name,
        }
        blobs[f"run {run_id} data"] = repr(data).encode()
        local = Path(client.download_artifacts(run_id, "", str(download_to / run_id)))
        for file in local.rglob("*"):
            if file.is_file():
                blobs[f"run {run_id} artifact {file.relative_to(local)}"] = file.read_bytes()
    for version in client.search_model_versions():
        blobs[f"model version {version.name}/{version.version}"] = repr(
            (version.source, version.tags, version.description, version.run_id)
        ).encode()
    return blobs


def files_under(folder: Path, label: str) -> dict[str, bytes]:
    """Every file under `folder` as a blob."""
    return {f"{label} {p.relative_to(folder)}": p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def prefect_query(info: StackInfo, path: str, body: dict[str, Any] | None = None) -> Any:
    """POST a filter query to the stack's Prefect REST API (e.g. `flow_runs/filter`), with its auth string."""
    token = base64.b64encode(info.auth.prefect_auth_string.encode()).decode()
    headers = {"Content-Type": "application/json", "Authorization": f"Basic {token}"}
    request = urllib.request.Request(
        f"{info.settings['PREFECT_API_URL']}/{path}", data=json.dumps(body or {}).encode(), headers=headers
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _address(hex_address: str) -> str:
    if len(hex_address) == 8:
        return ".".join(str(b) for b in reversed(bytes.fromhex(hex_address)))
    return hex_address  # IPv6: left as hex; any IPv6 listener fails the loopback check anyway


def _state(proc: Path) -> str:
    return (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]

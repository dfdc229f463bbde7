"""The stack's S3 endpoint refuses every request not signed with its key; nothing listens beyond loopback."""

import stat

import pytest
from botocore.exceptions import ClientError

from stagetune.data.loading import read_table_file
from stagetune.errors import InputError
from stagetune.stack import S3Credentials, StackInfo, s3_client
from tests.integration.helpers import listening_sockets

pytestmark = [pytest.mark.integration, pytest.mark.slow]
BUCKET = "stagetune"


def _refusal(client: object, operation: str) -> tuple[int, str]:
    calls = {
        "get": lambda c: c.get_object(Bucket=BUCKET, Key="probe.txt"),
        "put": lambda c: c.put_object(Bucket=BUCKET, Key="intruder.txt", Body=b"x"),
        "list": lambda c: c.list_objects_v2(Bucket=BUCKET),
        "create bucket": lambda c: c.create_bucket(Bucket="intruder-bucket"),
    }
    with pytest.raises(ClientError) as caught:
        calls[operation](client)
    response = caught.value.response
    return int(response["ResponseMetadata"]["HTTPStatusCode"]), str(response["Error"]["Code"])


@pytest.mark.parametrize("operation", ["get", "put", "list", "create bucket"])
def test_unsigned_and_wrong_key_requests_are_refused(stack: StackInfo, operation: str) -> None:
    endpoint = stack.service("seaweed").url or ""
    owner = s3_client(endpoint, stack.credentials)
    owner.put_object(Bucket=BUCKET, Key="probe.txt", Body=b"hello")
    good_key = stack.credentials.access_key_id
    strangers = {
        "unsigned": s3_client(endpoint, None),
        "wrong secret": s3_client(endpoint, S3Credentials(good_key, "0" * 40)),
        "unknown key": s3_client(endpoint, S3Credentials("STKUNKNOWN0000000000", "0" * 40)),
    }
    refusals = {name: _refusal(client, operation) for name, client in strangers.items()}
    assert refusals["unsigned"] == (403, "AccessDenied")
    assert refusals["wrong secret"] == (403, "SignatureDoesNotMatch")
    assert refusals["unknown key"] == (403, "InvalidAccessKeyId")
    # Nothing the strangers tried happened; the owner still reads and writes.
    assert owner.get_object(Bucket=BUCKET, Key="probe.txt")["Body"].read() == b"hello"
    keys = {item["Key"] for item in owner.list_objects_v2(Bucket=BUCKET).get("Contents", [])}
    assert "intruder.txt" not in keys
    assert "intruder-bucket" not in {b["Name"] for b in owner.list_buckets()["Buckets"]}


def test_a_data_file_read_with_wrong_keys_names_the_credentials_not_the_file(
    stack: StackInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = stack.service("seaweed").url or ""
    s3_client(endpoint, stack.credentials).put_object(Bucket=BUCKET, Key="data/table.csv", Body=b"x,y\n1,a\n2,b\n")
    monkeypatch.setenv("STAGETUNE_S3_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", stack.credentials.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", stack.credentials.secret_access_key)
    assert read_table_file(f"s3://{BUCKET}/data/table.csv")["y"].tolist() == ["a", "b"]  # the right keys read it
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "0" * 40)
    with pytest.raises(InputError) as caught:
        read_table_file(f"s3://{BUCKET}/data/table.csv")
    assert caught.value.field == "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
    assert f"the S3 endpoint {endpoint} refused the credentials" in caught.value.message
    assert "check the file" not in caught.value.message
    assert "0" * 40 not in caught.value.message


def test_every_port_of_the_stack_is_bound_to_loopback_only(stack: StackInfo) -> None:
    seaweed = stack.service("seaweed")
    assert seaweed.pid is not None
    sockets = listening_sockets(seaweed.pid)
    ports = {port for _, port in sockets}
    # S3, master, volume, filer (serves objects without auth!), admin, and their gRPC ports.
    assert len(sockets) >= 9
    assert seaweed.port in ports
    assert {address for address, _ in sockets} == {"127.0.0.1"}
    mlflow = stack.service("mlflow")
    assert mlflow.pid is not None
    server_sockets = {s for pid in _group(mlflow.pid) for s in listening_sockets(pid)}
    assert server_sockets == {("127.0.0.1", mlflow.port)}


def test_credentials_and_settings_are_private_to_the_user(stack: StackInfo) -> None:
    paths = stack.paths
    for secret_file in (paths.identities_file, paths.env_file, paths.auth_file, paths.mlflow_auth_config):
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600, secret_file
    assert stat.S_IMODE(paths.root.stat().st_mode) == 0o700
    settings = paths.env_file.read_text()
    assert f"MLFLOW_TRACKING_URI={stack.service('mlflow').url}\n" in settings
    assert f"STAGETUNE_S3_ENDPOINT_URL={stack.service('seaweed').url}\n" in settings
    assert f"MLFLOW_TRACKING_PASSWORD={stack.auth.mlflow_password}\n" in settings
    assert f"PREFECT_API_AUTH_STRING={stack.auth.prefect_auth_string}\n" in settings
    # The basic-auth app's ini sets who may do what; the password itself only reaches MLflow's environment.
    ini = paths.mlflow_auth_config.read_text()
    assert "default_permission = NO_PERMISSIONS\n" in ini
    assert stack.auth.mlflow_password not in ini


def _group(pgid: int) -> list[int]:
    from pathlib import Path

    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                members.append(int(entry.name))
    return members

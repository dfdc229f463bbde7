"""The S3 credentials of the local stack: generated once, kept in SeaweedFS's identities file (0600)."""

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from stagetune.atomic_file import write_text_atomically
from stagetune.stack.paths import StackPaths

IDENTITY_NAME = "stagetune"
# Everything one owner of the bucket needs; SeaweedFS refuses any request not signed with these keys.
IDENTITY_ACTIONS = ("Admin", "Read", "Write", "List", "Tagging")


class CredentialsError(Exception):
    """The identities file exists but cannot be read back."""


@dataclass(frozen=True)
class S3Credentials:
    """One access key and its secret (the secret is left out of repr so it never lands in a log)."""

    access_key_id: str
    secret_access_key: str = field(repr=False)

    def values(self) -> tuple[str, str]:
        """Both values, for masking and for tests that look for leaks."""
        return (self.access_key_id, self.secret_access_key)


def generate_credentials() -> S3Credentials:
    """A fresh random key pair: 20 upper-case hex characters and a 40-character hex secret."""
    access_key_id = "STK" + secrets.token_hex(9).upper()[:17]
    return S3Credentials(access_key_id=access_key_id, secret_access_key=secrets.token_hex(20))


def identities_config(credentials: S3Credentials) -> dict[str, Any]:
    """SeaweedFS's `-s3.config` document with one identity."""
    return {
        "identities": [
            {
                "name": IDENTITY_NAME,
                "credentials": [{"accessKey": credentials.access_key_id, "secretKey": credentials.secret_access_key}],
                "actions": list(IDENTITY_ACTIONS),
            }
        ]
    }


def load_or_create_credentials(paths: StackPaths) -> S3Credentials:
    """The stack's key pair: read from the identities file, or generated and written there (mode 0600)."""
    path = paths.identities_file
    if path.exists():
        path.chmod(0o600)
        return _read_identities(path.read_text(encoding="utf-8"), str(path))
    credentials = generate_credentials()
    write_text_atomically(path, json.dumps(identities_config(credentials), indent=2), fsync=False, private=True)
    return credentials


def read_credentials(paths: StackPaths) -> S3Credentials:
    """The stack's key pair; CredentialsError when `stack up` has not created it yet."""
    if not paths.identities_file.is_file():
        raise CredentialsError(f"{paths.identities_file} does not exist: run `stagetune stack up` first")
    return _read_identities(paths.identities_file.read_text(encoding="utf-8"), str(paths.identities_file))


def _read_identities(text: str, where: str) -> S3Credentials:
    try:
        entry = json.loads(text)["identities"][0]["credentials"][0]
        return S3Credentials(access_key_id=str(entry["accessKey"]), secret_access_key=str(entry["secretKey"]))
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise CredentialsError(
            f"{where} is not a SeaweedFS identities file ({type(error).__name__}): delete it (and the stack's "
            "data folder) to generate new credentials"
        ) from None

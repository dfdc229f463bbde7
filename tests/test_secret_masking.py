"""The one masking policy: the rules the log filter and the report share (see stagetune.secret_masking)."""

from schemas.urls import redact_url, without_credentials
from stagetune.secret_masking import MASK, known_secrets, mask_data, mask_text

ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"


def test_url_passwords_are_masked_anywhere_in_a_text() -> None:
    assert mask_text("s3://key:pa55word@bucket/x and sqlite:///a.db") == f"s3://key:{MASK}@bucket/x and sqlite:///a.db"
    assert mask_text("to postgresql+psycopg://me:pw@db/x failed") == "to postgresql+psycopg://me:***@db/x failed"
    # A whole URL whose password holds '@' loses all of it, not only the part before the first '@'.
    assert redact_url("postgresql://me:p@ss@db/x") == "postgresql://me:***@db/x"
    assert redact_url("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"


def test_dsn_passwords_are_masked() -> None:
    assert mask_text("host=db password=s3cr3t dbname=x") == f"host=db password={MASK} dbname=x"
    assert mask_text("host=db PWD = s3cr3t;") == f"host=db PWD = {MASK};"


def test_known_values_are_masked_from_four_characters() -> None:
    assert mask_text(f"id {ACCESS_KEY}.", [ACCESS_KEY]) == f"id {MASK}."
    assert mask_text("user pass1 ok", ["pass1"]) == f"user {MASK} ok"
    assert mask_text("abc logged in", ["abc"]) == "abc logged in"  # too short to mask everywhere


def test_secret_named_keys_are_masked_in_nested_data() -> None:
    masked = mask_data(
        {
            "aws_secret_access_key": "x",
            "password": "",
            "nested": [{"token": "t"}, {"prefect_auth_string": "u:p"}],
            "name": "n",
            "uri": "http://u:pw@h",
        }
    )
    assert masked == {
        "aws_secret_access_key": MASK,
        "password": "",
        "nested": [{"token": MASK}, {"prefect_auth_string": MASK}],
        "name": "n",
        "uri": f"http://u:{MASK}@h",
    }
    assert mask_data({"dsn": "host=a password=hunter22"}) == {"dsn": f"host=a password={MASK}"}
    assert mask_data({"key": "k", "apiKey": "k", "keypoints": "k", "monkey": "k"}) == {
        "key": MASK,
        "apiKey": MASK,
        "keypoints": "k",
        "monkey": "k",
    }


def test_values_guessed_from_names_need_six_characters_declared_ones_four() -> None:
    environ = {
        "TOKENIZERS_PARALLELISM": "false",  # a secret-looking name holding a flag: not masked
        "PGPASSWORD": "pg-password-1",
        "SERVICE_API_KEY": "k3y-123456",
        "GPG_KEY": "0xDEADBEEF",
        "PIP_KEYRING_PROVIDER": "import",  # "key" is not a word of this name
        "MLFLOW_TRACKING_URI": "https://alice:pw12@mlflow.example:5000",  # a declared URL password: 4 characters do
        "HOME": "/root",
    }
    assert set(known_secrets(environ)) == {"pg-password-1", "k3y-123456", "0xDEADBEEF", "pw12"}


def test_links_drop_the_credentials_and_keep_the_host_as_written() -> None:
    assert without_credentials("https://ci:s3cr3t@MLflow.example.com:8443/x") == "https://MLflow.example.com:8443/x"
    assert without_credentials("http://ci@[::1]:5000/") == "http://[::1]:5000/"
    assert without_credentials("http://[::1]:5000/") == "http://[::1]:5000/"

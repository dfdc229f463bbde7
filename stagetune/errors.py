"""The error stagetune turns into exit code 2; a failed sanity gate is a result (exit 3), anything else exit 1."""


class InputError(Exception):
    """Bad input from the user (config, data, arguments, environment): exit code 2.

    `field` names what is wrong (e.g. ``data.target``), `message` says what and how to fix it.
    """

    exit_code = 2

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class StoreError(Exception):
    """A tracking or artifact store failed in a way retrying cannot fix (read-only, permission denied,
    disk full, schema mismatch, credentials refused) after the run had started: exit code 1.

    Its message is one paragraph: which store, what failed, the fix, and that the run can be continued.
    """

    exit_code = 1

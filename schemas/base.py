"""The base model every stagetune schema derives from."""

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Frozen, no unknown keys: a typo in a config or result is an error, never ignored."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

"""Reading the one config: a YAML file (optional), `--set dotted.key=value` overrides, one validation."""

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from schemas.config import PipelineConfig
from stagetune.errors import InputError


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> PipelineConfig:
    """The validated config: file contents (or embedded defaults), then overrides, in that order."""
    raw = merge(PipelineConfig().model_dump(mode="json"), read_config_file(Path(path)) if path else {})
    for override in overrides:
        key, value = parse_override(override)
        raw = with_value(raw, key.split("."), value)
    return validate_config(raw)


def read_config_file(path: Path) -> dict[str, Any]:
    """The YAML mapping in `path`; an InputError for a missing, unreadable or non-mapping file."""
    if not path.is_file():
        raise InputError("CONFIG", f"config file {str(path)!r} does not exist: pass the path of a YAML file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise InputError("CONFIG", f"{str(path)!r} is not valid YAML ({_one_line(error)}): fix the syntax") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError("CONFIG", f"{str(path)!r} must hold a mapping of sections, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=value` -> ("a.b", value), the value read as a YAML scalar or flow collection."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise InputError("--set", f"{text!r} is not of the form dotted.key=value (e.g. coarse.n_trials=10)")
    try:
        return key, yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as error:
        raise InputError("--set", f"the value in {text!r} is not valid YAML ({_one_line(error)})") from error


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """`update` laid over `base`: mappings merge key by key, anything else (lists too) replaces.

    A mapping whose `kind` differs from the base's (e.g. an int range turned categorical) replaces
    the base mapping instead of merging into it, so the old kind's keys do not linger.
    """
    result = dict(base)
    for key, value in update.items():
        old = result.get(key)
        if (
            isinstance(old, Mapping)
            and isinstance(value, Mapping)
            and old.get("kind", value.get("kind")) == value.get("kind", old.get("kind"))
        ):
            result[key] = merge(old, value)
        else:
            result[key] = value
    return result


def with_value(data: Mapping[str, Any], path: Sequence[str], value: Any) -> dict[str, Any]:
    """A copy of `data` with the nested key `path` set to `value` (intermediate mappings created)."""
    result = dict(data)
    head, rest = path[0], path[1:]
    if not rest:
        result[head] = value
        return result
    child = result.get(head, {})
    if not isinstance(child, Mapping):
        raise InputError("--set", f"cannot set a key below {head!r}: it holds a value, not a section")
    result[head] = with_value(child, rest, value)
    return result


def validate_config(raw: Mapping[str, Any]) -> PipelineConfig:
    """Validate once; turn pydantic's errors into one InputError naming each field and the fix."""
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as error:
        items = error.errors(include_url=False)
        problems = [describe_problem(item) for item in items]
        raise InputError(problem_field(items[0]), "; ".join(problems)) from None


def problem_field(item: Mapping[str, Any]) -> str:
    """The dotted name of the setting an error is about.

    Checks that span a section report the section as their location; their messages start with
    the exact setting (e.g. "data.target is required ..."), which is the more useful name.
    """
    field = _location(item["loc"])
    if isinstance(item.get("input"), Mapping):
        head = _message(item).split(" ", 1)[0]
        if "." in head and head.startswith(field):
            return head
    return field or "config"


def describe_problem(item: Mapping[str, Any]) -> str:
    """One pydantic error as 'field = value: what is wrong (how to fix)'."""
    field = _location(item["loc"]) or "config"
    kind = item["type"]
    message = _message(item)
    if kind == "extra_forbidden":
        return f"{field} is not a known setting: remove it or fix its spelling (see `stagetune schema`)"
    if kind == "missing":
        return f"{field} is required: add it"
    value = item.get("input")
    if isinstance(value, Mapping | list):  # a section-level check: its message names the fields
        return message if message.startswith(field) else f"{field}: {message}"
    return f"{field} = {_short(value)}: {message}"


def _message(item: Mapping[str, Any]) -> str:
    return str(item["msg"]).removeprefix("Value error, ")


def _location(loc: Sequence[int | str]) -> str:
    # Discriminated unions add the tag ('float', 'int', ...) as a location part: not a user field.
    parts = [str(p) for p in loc if p not in ("float", "int", "categorical")]
    return ".".join(parts)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())[:200]

"""Reading the one config: a YAML file (optional), `--set dotted.key=value` overrides, one validation."""

import inspect
import math
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from schemas.config import ExecutionConfig, PipelineConfig
from stagetune.errors import InputError
from stagetune.secret_masking import mask_text
from stagetune.settings import load_settings
from stagetune.user_code import resolve_user_callable


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> PipelineConfig:
    """The validated config: file contents (or embedded defaults), then overrides, in that order.

    The config is then checked against this machine (`check_environment`), so that nothing starts
    (no run folder, no MLflow run) before every input a command gets has been checked.
    """
    config = read_config(path, overrides)
    check_environment(config)
    return config


def read_config(path: str | Path | None, overrides: Sequence[str] = ()) -> PipelineConfig:
    """The config validated against its schema only (fast: no torch import); `load_config` also checks
    it against this machine, which `stagetune run` does once Prefect's server has started (issue 18)."""
    given = read_config_file(Path(path)) if path else {}
    raw = merge(PipelineConfig().model_dump(mode="json"), given)
    for override in overrides:
        key, value = parse_override(override)
        raw = with_value(raw, key.split("."), value)
        given = with_value(given, key.split("."), value)
    return remember_given(validate_config(raw), raw, given)


def remember_given(config: PipelineConfig, raw: Mapping[str, Any], given: Mapping[str, Any]) -> PipelineConfig:
    """The same config, validated from the settings the file and the --set overrides gave only, so that each
    section's `model_fields_set` names what the user set: defaults derived from the data (image budgets,
    `stagetune.data.image_defaults`) fill only the rest. Falls back to `config` should the two differ."""
    try:
        restricted = PipelineConfig.model_validate(_given_part(raw, given, PipelineConfig))
    except ValidationError:
        return config
    return restricted if restricted == config else config


def _given_part(raw: Mapping[str, Any], given: Mapping[str, Any], model: type[BaseModel]) -> dict[str, Any]:
    # Sections recurse; any other field (a search range, a dict of ranges, a list) is taken whole from `raw`,
    # where the defaults it merged into are filled in.
    part: dict[str, Any] = {}
    for key, value in given.items():
        if key not in raw:
            continue
        field = model.model_fields.get(key)
        annotation = field.annotation if field is not None else None
        section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if section and isinstance(value, Mapping) and isinstance(raw[key], Mapping):
            part[key] = _given_part(raw[key], value, annotation)  # type: ignore[arg-type]
        else:
            part[key] = raw[key]
    return part


def check_environment(config: PipelineConfig) -> None:
    """What the schema cannot see: the runtime settings in the environment (tracking URI, Optuna storage,
    S3 endpoint) are well-formed, the device exists here, the model family is registered and takes the
    model settings, and a custom model factory imports.

    Raises `InputError` naming the variable or setting.
    """
    load_settings()
    if config.execution.device not in ("auto", "cpu") and _trains_here(config.execution):
        from stagetune.training.device import resolve_device  # deferred: it imports torch

        resolve_device(config.execution.device)
    from stagetune.models import check_model_config  # deferred: it imports torch

    check_model_config(config.model)
    if config.model.family == "custom" and config.model.import_path:
        resolve_factory(config.model.import_path)
    if config.data.source_kind == "factory":  # imported and its signature checked, not called (trust boundary)
        from stagetune.data.sources.factory import resolve_dataset_factory

        resolve_dataset_factory(config.data.source)


def resolve_factory(import_path: str) -> object:
    """The callable `package.module:factory` names; an InputError on `model.import_path` if there is none."""
    target = resolve_user_callable(import_path, "model.import_path", "a factory function")
    check_factory_signature(import_path, target)
    return target


def check_factory_signature(import_path: str, factory: Callable[..., object]) -> None:
    """An InputError unless `factory` can be called as `factory(hp, input_shape, num_classes)`.

    Checked by `inspect.signature`, without calling it: an import path such as `os:system` would
    otherwise pass as "a callable" and fail (or run) only when the first trial builds its model.
    """
    fix = (
        "point it at a function (or class) called as factory(hp, input_shape, num_classes) returning a torch.nn.Module"
    )
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin without introspectable parameters
        raise InputError("model.import_path", f"{import_path!r} has no inspectable signature: {fix}") from None
    try:
        signature.bind("hp", "input_shape", "num_classes")
    except TypeError as error:
        raise InputError(
            "model.import_path",
            f"{import_path!r} takes {signature}, not (hp, input_shape, num_classes) ({error}): {fix}",
        ) from None


def _trains_here(execution: ExecutionConfig) -> bool:
    # Trials on a remote Dask cluster use the workers' devices, which this machine need not have.
    return execution.task_runner == "threads" or execution.dask_address is None


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
    for key, value in misread_numbers(PipelineConfig, raw):
        if isinstance(value, bool):
            raise InputError(
                key,
                f"{key} = {str(value).lower()}: expected a number, got a boolean (YAML reads true/false, yes/no "
                "and on/off as booleans): write a number",
            )
        raise InputError(key, f"{key} = {value}: expected a finite number: write a number in the setting's range")
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as error:
        items = error.errors(include_url=False)
        problems = [describe_problem(item) for item in items]
        raise InputError(problem_field(items[0]), "; ".join(problems)) from None


def misread_numbers(model: type[BaseModel], raw: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) wherever `raw` gives a number setting a value pydantic would take but the user
    did not mean: true/false (read as 1/0) or infinity/NaN (.inf, "inf": no setting is unbounded that way)."""
    for name, field in model.model_fields.items():
        value = raw.get(name)
        if _is_number(field.annotation) and (isinstance(value, bool) or not math.isfinite(_as_float(value))):
            yield prefix + name, value
        elif (
            isinstance(value, Mapping)
            and isinstance(field.annotation, type)
            and issubclass(field.annotation, BaseModel)
        ):
            yield from misread_numbers(field.annotation, value, f"{prefix}{name}.")


def _as_float(value: Any) -> float:
    # Only what pydantic would read as a number; anything else is its to reject (0.0 means "no opinion").
    try:
        return float(value) if isinstance(value, float | str) else 0.0
    except ValueError:
        return 0.0


def _is_number(annotation: Any) -> bool:
    """int, float, or an optional one of them (`int | None`)."""
    if annotation in (int, float):
        return True
    if get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        return bool(members) and all(a in (int, float) for a in members)
    return False


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
    field = _location(item["loc"])
    kind = item["type"]
    message = _message(item)
    if kind == "extra_forbidden":
        return f"{field} is not a known setting: remove it or fix its spelling (see `stagetune schema`)"
    if kind == "missing":
        return f"{field} is required: add it"
    value = item.get("input")
    if isinstance(value, Mapping) and field and message.split(" ", 1)[0] in value:
        # A section's check whose message starts with one of its settings: name it in full.
        return f"{field}.{message}"
    if isinstance(value, Mapping | list):  # a section-level check: its message names the fields
        return message if not field or message.startswith(field) else f"{field}: {message}"
    return f"{field or 'config'} = {_short(value)}: {message}"


def _message(item: Mapping[str, Any]) -> str:
    return str(item["msg"]).removeprefix("Value error, ")


def _location(loc: Sequence[int | str]) -> str:
    # Discriminated unions add the tag ('float', 'int', ...) as a location part, and a dict key's own
    # check adds '[key]': neither is a user field.
    parts = [str(p) for p in loc if p not in ("float", "int", "categorical", "[key]")]
    return ".".join(parts)


def _short(value: Any) -> str:
    text = mask_text(repr(value))  # a refused URL is echoed without its password
    return text if len(text) <= 80 else text[:77] + "..."


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())[:200]

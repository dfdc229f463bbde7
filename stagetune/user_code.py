"""Importing the user's own module (`model.import_path`): installed packages first, then the current directory.

A console script (`stagetune run ...`) does not put the current directory on `sys.path` as
`python -m` does, so `examples.custom_model.model` would not import from the repository root.
The directory is appended, not prepended: an installed package always wins over a same-named file
here. Whatever is imported runs with the caller's rights (README, "Trust boundary").
"""

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from stagetune.errors import InputError
from stagetune.secret_masking import mask_text


def import_user_module(module_name: str) -> ModuleType:
    """`importlib.import_module(module_name)`, retried with the current directory on `sys.path` if not found."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        top = module_name.split(".")[0]
        here = os.getcwd()
        if error.name != top or here in sys.path or "" in sys.path:
            raise
        sys.path.append(here)
        return importlib.import_module(module_name)


def resolve_user_callable(path: str, field: str, expected: str) -> Callable[..., Any]:
    """The callable `package.module:attr.attr` names, imported as `import_user_module` does.

    Raises an InputError on `field` when the module does not import (its own error, secrets masked),
    an attribute is missing, or the target is not callable (`expected` says what it should be).
    """
    module_name, _, attribute = path.partition(":")
    try:
        target: object = import_user_module(module_name)
    except Exception as error:  # ImportError, or the module's own code failing at import
        reason = f"{type(error).__name__}: {mask_text(str(error))}"
        raise InputError(
            field, f"cannot import module {module_name!r} ({reason}): is it installed, or under the current directory?"
        ) from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise InputError(field, f"module {module_name!r} has no attribute {attribute!r}: check the name")
        target = getattr(target, part)
    if not callable(target):
        raise InputError(field, f"{path!r} is not callable: point it at {expected}")
    return target

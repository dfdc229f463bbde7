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
from types import ModuleType


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

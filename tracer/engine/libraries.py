"""A library's module, where the user's program has imported that library: nothing is imported for a program
that never uses it (a CNN's simulation does not pay for importing `transformers`)."""

from __future__ import annotations

import importlib
import sys
from types import ModuleType


def library_module(name: str) -> ModuleType | None:
    """`name` (a dotted module of a library), imported if its library already is; else None."""
    module = sys.modules.get(name)
    if module is not None or name.partition(".")[0] not in sys.modules:
        return module
    try:
        return importlib.import_module(name)
    except ImportError:
        return None

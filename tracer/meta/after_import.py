"""Work done once a module is imported: now if it already is, else right after its import.

Patching a class of a module that is slow to import (inductor's `GraphLowering`: `torch._inductor.graph`
loads lowering, networkx and functorch's partitioners, about 1 s of CPU) would make every simulation pay for
the import, though only a step that compiles ever uses the class. `after_import` waits for the step's own
import of the module instead (Dynamo's, when the step compiles), and patches it then.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib.abc import Loader, MetaPathFinder
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any


class _Waiting(MetaPathFinder):
    """Finds nothing itself: for the awaited module, it wraps the spec the other finders give so that
    `then` runs once the module's code has run."""

    def __init__(self, name: str, then: Callable[[], None]) -> None:
        self.name, self.then, self.done = name, then, False

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname != self.name or self.done:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Then(spec.loader, self._loaded)
                return spec
        return None

    def _loaded(self) -> None:
        if not self.done:
            self.done = True
            self.then()


class _Then(Loader):
    """A module's own loader, then `then`."""

    def __init__(self, loader: Any, then: Callable[[], None]) -> None:
        self.loader, self.then = loader, then

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        made: ModuleType | None = self.loader.create_module(spec)
        return made

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        self.then()

    def __getattr__(self, name: str) -> Any:  # get_source, get_code, is_package...: the module's loader's
        return getattr(self.loader, name)


@contextmanager
def after_import(name: str, then: Callable[[], None]) -> Iterator[None]:
    """Run `then` once module `name` is imported: at once if it is, else right after its import inside the
    block (not at all if it never is)."""
    if name in sys.modules:
        then()
        yield
        return
    waiting = _Waiting(name, then)
    sys.meta_path.insert(0, waiting)
    try:
        yield
    finally:
        if waiting in sys.meta_path:
            sys.meta_path.remove(waiting)

"""engine/libraries.py: a library's module only where the program imported the library."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from memtrace.tracer.engine.libraries import library_module


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = "memtrace_library_probe"
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / name / "part.py").write_text("VALUE = 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for module in (name, f"{name}.part"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    return name


def test_a_library_never_imported_stays_unimported(package: str) -> None:
    assert library_module(f"{package}.part") is None
    assert package not in sys.modules and f"{package}.part" not in sys.modules


def test_an_imported_librarys_module_is_imported(package: str) -> None:
    __import__(package)
    module = library_module(f"{package}.part")
    assert module is not None and module.VALUE == 7


def test_a_missing_module_of_an_imported_library_is_none(package: str) -> None:
    __import__(package)
    assert library_module(f"{package}.absent") is None

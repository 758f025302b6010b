"""pyproject lists the packages one by one (tracer/ installs as memtrace.tracer, cli/ as memtrace.cli): every
package directory must be in that list, since an editable install would hide a missing one."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _packages_on_disk() -> set[str]:
    roots = {
        "memtrace": REPO / "src" / "memtrace",
        "memtrace.tracer": REPO / "tracer",
        "memtrace.cli": REPO / "cli",
    }
    found = set()
    for name, root in roots.items():
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root).parts
            found.add(".".join((name, *rel)))
    return found


def test_pyproject_lists_every_package() -> None:
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(config["packages"]) == _packages_on_disk()
    assert config["package-dir"] == {
        "memtrace": "src/memtrace",
        "memtrace.tracer": "tracer",
        "memtrace.cli": "cli",
    }

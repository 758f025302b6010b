"""The house's rules, read from the code's own imports (ast, imports inside functions included; those under
`TYPE_CHECKING` do not count): the rooms of `tracer/`, imports that flow one way, no cycle, few flat modules,
relative imports inside `tracer/`, and the old module paths kept for one release behind a warning."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
TRACER = ROOT / "tracer"
sys.path.insert(0, str(ROOT / "docs"))
import architecture_graph as _GRAPH  # noqa: E402  (the docs draw the rooms with the same reader)

sys.path.remove(str(ROOT / "docs"))

# Each room and the rooms it may import (itself always). The facade is `tracer/simulate.py` (and
# `tracer/__init__.py`); "studies" and "real" sit above it.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "meta": {"core"},
    "devices": {"core", "meta"},
    "engine": {"core", "meta", "devices"},
    "analysis": {"core", "devices"},
    "outputs": {"core", "analysis", "devices"},
    "facade": {"core", "meta", "devices", "engine", "analysis"},
    "studies": {"core", "meta", "devices", "engine", "analysis", "facade", "outputs"},
    "real": {"core", "meta", "devices", "engine", "analysis", "facade", "outputs"},
}
MAX_FLAT = 8


def _module(path: Path) -> str:
    parts = path.relative_to(TRACER).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__")


def room(module: str) -> str:
    first = module.split(".")[0]
    return first if first in ALLOWED else "facade"


def imports(path: Path) -> Iterator[tuple[int, str, bool]]:
    """(line, imported tracer module, is relative) for every import of a tracer module in the file."""
    tree = ast.parse(path.read_text())
    skip = _GRAPH.type_checking_lines(tree)
    here = _module(path).split(".") if _module(path) else []
    package = here if path.name == "__init__.py" else here[:-1]
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom) or node.lineno in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.startswith("memtrace.tracer"):
                target = node.module.split(".")[2:]
            else:
                continue
            for alias in node.names:
                yield node.lineno, _resolve([*target, alias.name]), bool(node.level)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("memtrace.tracer."):
                    yield node.lineno, _resolve(alias.name.split(".")[2:]), False


def _resolve(parts: list[str]) -> str:
    """The longest prefix of `parts` that is a tracer module or package."""
    for n in range(len(parts), 0, -1):
        path = TRACER.joinpath(*parts[:n])
        if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file():
            return ".".join(parts[:n])
    return ".".join(parts)


def graph() -> nx.DiGraph:
    g = nx.DiGraph()
    for path in TRACER.rglob("*.py"):
        g.add_node(_module(path))
        for _, target, _ in imports(path):
            if target and target != _module(path):
                g.add_edge(_module(path), target)
    return g


def test_imports_flow_one_way() -> None:
    wrong = [
        f"{src} ({room(src)}) imports {dst} ({room(dst)})"
        for src, dst in graph().edges
        if room(dst) != room(src) and room(dst) not in ALLOWED[room(src)] and dst
    ]
    assert not wrong, "\n".join(wrong)


def test_no_cycle() -> None:
    g = graph()
    g.remove_edges_from([(a, b) for a, b in g.edges if b == "" or b.startswith(f"{a}.")])  # a package's own
    cycles = list(nx.simple_cycles(g))
    assert not cycles, cycles[:5]


def test_core_imports_no_torch() -> None:
    for path in (TRACER / "core").rglob("*.py"):
        text = path.read_text()
        assert "import torch" not in text and "from torch" not in text, path


def test_few_flat_modules() -> None:
    flat = sorted(p.name for p in TRACER.glob("*.py"))
    assert len(flat) <= MAX_FLAT, flat


def test_tracer_imports_itself_relatively() -> None:
    absolute = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in TRACER.rglob("*.py")
        for line, _, relative in imports(path)
        if not relative
    ]
    assert not absolute, absolute


def test_nothing_imports_cli() -> None:
    for path in [*TRACER.rglob("*.py"), *(ROOT / "src").rglob("*.py")]:
        if path.parts[-3:-1] == ("memtrace", "cli"):
            continue
        assert "memtrace.cli" not in path.read_text().replace("memtrace.cli.main:main", ""), path


def test_every_module_is_packaged() -> None:
    """setuptools' package-dir mapping installs tracer/ as memtrace.tracer: every folder must be listed."""
    text = (ROOT / "pyproject.toml").read_text()
    for init in TRACER.rglob("__init__.py"):
        package = ".".join(["memtrace", "tracer", *init.parent.relative_to(TRACER).parts])
        assert f'"{package}"' in text, package


@pytest.mark.parametrize(
    "old,new",
    [
        ("memtrace.tracer.whatif", "memtrace.tracer.studies.whatif"),
        ("memtrace.tracer.fit", "memtrace.tracer.studies.fit"),
        ("memtrace.tracer.plots", "memtrace.tracer.outputs.plots"),
        ("memtrace.tracer.recipes", "memtrace.tracer.engine.recipes"),
        ("memtrace.tracer.metacopy", "memtrace.tracer.meta.metacopy"),
        ("memtrace.tracer.records", "memtrace.tracer.core.records"),
        ("memtrace.tracer.devices.cuda.presets", "memtrace.tracer.core.presets"),
    ],
)
def test_old_paths_warn_and_give_the_new_module(old: str, new: str) -> None:
    code = (
        "import warnings, importlib; warnings.simplefilter('error', DeprecationWarning)\n"
        f"try:\n    importlib.import_module({old!r})\nexcept DeprecationWarning as w:\n    print(w)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert f"{old} moved to {new}" in out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert importlib.import_module(old) is importlib.import_module(new)


MAX_LINES = 600
LONG_ALLOWED = {"devices/cpu/gemm_lowp.py"}  # the line-by-line port of oneDNN's GEMM blocking


def test_modules_are_small() -> None:
    long = [
        f"{path.relative_to(TRACER)} ({n} lines)"
        for path in [*TRACER.rglob("*.py"), *(ROOT / "cli").rglob("*.py"), *(ROOT / "src").rglob("*.py")]
        if (n := len(path.read_text().splitlines())) > MAX_LINES
        and str(path.relative_to(TRACER) if path.is_relative_to(TRACER) else path) not in LONG_ALLOWED
    ]
    assert not long, long


def test_only_the_recorder_assigns_its_fields() -> None:
    """The Recorder's narrow API (push/pop of modules, phases, `allocating_as`, `at_node`, ...): no other
    module assigns a recorder's fields or mutates its module stack."""
    wrong = []
    for path in TRACER.rglob("*.py"):
        if path.name == "recorder.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            for target in targets:
                owner = ast.unparse(target.value) if isinstance(target, ast.Attribute) else ""
                if owner in ("rec", "recorder", "self.rec"):
                    wrong.append(f"{path.relative_to(TRACER)}:{node.lineno} {ast.unparse(target)}")
            called = ast.unparse(node.func) if isinstance(node, ast.Call) else ""
            if called.startswith(("rec.module_stack.", "rec.input_shapes.", "rec.output_shapes.")):
                wrong.append(f"{path.relative_to(TRACER)}:{node.lineno} {called}")
    assert not wrong, wrong

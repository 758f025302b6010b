"""meta/after_import.py: work done once a module is imported, at once if it already is."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from memtrace.tracer.meta.after_import import after_import


@pytest.fixture
def fresh_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = "memtrace_after_import_probe"
    (tmp_path / f"{name}.py").write_text("VALUE = 41\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


def test_the_work_waits_for_the_import_and_sees_the_module_run(fresh_module: str) -> None:
    seen: list[int] = []
    finders = list(sys.meta_path)
    with after_import(fresh_module, lambda: seen.append(sys.modules[fresh_module].VALUE)):
        assert seen == []
        module = importlib.import_module(fresh_module)
        assert seen == [41] and module.VALUE == 41
        importlib.reload(module)
        assert seen == [41]  # once
    assert sys.meta_path == finders


def test_an_imported_module_has_the_work_done_at_once(fresh_module: str) -> None:
    importlib.import_module(fresh_module)
    seen: list[str] = []
    with after_import(fresh_module, lambda: seen.append("done")):
        assert seen == ["done"]


def test_a_module_never_imported_has_no_work_done(fresh_module: str) -> None:
    seen: list[str] = []
    with after_import(fresh_module, lambda: seen.append("done")):
        pass
    importlib.import_module(fresh_module)
    assert seen == [] and fresh_module in sys.modules


def test_a_step_that_compiles_nothing_does_not_import_inductors_lowering() -> None:
    """`torch._inductor.graph` (about 1 s of CPU to import) is patched only once a compiling step imports
    it; `transformers` (about 2 s) is looked at only where the program imported it."""
    import subprocess
    import textwrap

    code = textwrap.dedent(
        """
        import sys
        import torch
        from memtrace.tracer.simulate import simulate
        model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU())
        simulate(model, inputs=[torch.randn(2, 8)], device="cpu")
        print("transformers" in sys.modules)
        print("torch._inductor.graph" in sys.modules)
        """
    )
    command = [sys.executable, "-c", code]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip().splitlines()[-2:] == ["False", "False"]

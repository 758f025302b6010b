"""tracer/engine/loader.py: `FILE.py:FUNC` and `package.module:FUNC` found, refused in one line when they
are not there, and a builder's (module, examples) split into the model and its input specs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from memtrace.tracer.core.errors import MemtraceError
from memtrace.tracer.core.records import InputSpec
from memtrace.tracer.engine.loader import build_on_meta, load_object, split_result

BUILDERS = """
import torch
from torch import nn

SIZE = 3


def build(width=4):
    return nn.Linear(SIZE, width)


def build_with_examples():
    return nn.Linear(SIZE, 2), (torch.zeros(5, SIZE), torch.zeros(5, dtype=torch.int64))


def build_with_named_examples():
    return nn.Linear(SIZE, 2), {"x": torch.zeros(5, SIZE, dtype=torch.bfloat16)}


class Holder:
    class Inner:
        @staticmethod
        def build():
            return nn.ReLU()
"""


@pytest.fixture
def builders(tmp_path: Path) -> Path:
    path = tmp_path / "builders.py"
    path.write_text(BUILDERS)
    return path


def _one_line(exc: pytest.ExceptionInfo[MemtraceError]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_file_and_function(builders: Path) -> None:
    build = load_object(f"{builders}:build")
    assert isinstance(build(width=7), nn.Linear) and build(width=7).out_features == 7
    assert load_object(f"{builders}:SIZE") == 3
    assert isinstance(load_object(f"{builders}:Holder.Inner.build")(), nn.ReLU)  # dotted attributes


def test_module_and_function() -> None:
    assert load_object("torch.nn:Linear") is nn.Linear
    assert load_object("memtrace.tracer.engine.loader:load_object") is load_object


def test_a_file_is_imported_once_per_version(builders: Path) -> None:
    assert load_object(f"{builders}:build") is load_object(f"{builders}:build")
    assert load_object(f"{builders}:build", fresh=True) is not load_object(f"{builders}:build")


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(MemtraceError) as exc:
        load_object(f"{tmp_path / 'nowhere.py'}:build")
    assert _one_line(exc) == f"file not found: {tmp_path / 'nowhere.py'}"


def test_missing_attribute_is_one_line(builders: Path) -> None:
    with pytest.raises(MemtraceError) as exc:
        load_object(f"{builders}:nothing", "step")
    assert _one_line(exc) == f"step '{builders}:nothing': {builders} has no attribute 'nothing'"


def test_missing_module_and_failing_import_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(MemtraceError, match=r"^module not found: no_such_package_here "):
        load_object("no_such_package_here:build")
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\n\nraise RuntimeError('bad line one\\nline two')\n")
    with pytest.raises(MemtraceError) as exc:
        load_object(f"{broken}:build")
    assert _one_line(exc).startswith(f"importing {broken} failed: ")
    assert "bad line one" in str(exc.value)


def test_malformed_target_is_refused() -> None:
    with pytest.raises(MemtraceError, match=r"expected FILE\.py:FUNC"):
        load_object("builders.py")


def test_builder_returning_module_and_examples(builders: Path) -> None:
    model, examples = split_result(load_object(f"{builders}:build_with_examples")(), "b")
    assert isinstance(model, nn.Linear)
    assert examples == (InputSpec((5, 3)), InputSpec((5,), "int64"))
    model, examples = split_result(load_object(f"{builders}:build_with_named_examples")(), "b")
    assert examples == (InputSpec((5, 3), "bfloat16", "x"),)
    model, examples = split_result(nn.ReLU(), "b")
    assert examples == ()


def test_builder_returning_something_else_is_refused() -> None:
    with pytest.raises(MemtraceError, match=r"^builder b returned int, not an nn.Module$"):
        split_result(3, "b")
    with pytest.raises(MemtraceError, match="example input of type str is not a tensor"):
        split_result((nn.ReLU(), ("x",)), "b")


def test_build_on_meta(builders: Path) -> None:
    built = build_on_meta(load_object(f"{builders}:build"), {"width": 5}, "build")
    assert built.path == "meta"
    assert all(p.device.type == "meta" for p in built.model.parameters())
    assert built.model.weight.shape == torch.Size([5, 3])


def _cast_then_moved(dtype: torch.dtype, device: str) -> nn.Module:
    """A builder as users write one: cast, then moved to a device (the move fails on meta)."""
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Embedding(5, 4))
    model.register_buffer("steps", torch.zeros(2, dtype=torch.int64))
    model = model.to(dtype)
    return model.to(torch.device(device))


@pytest.mark.parametrize("how", ["to(dtype)", "to(device, dtype)", "to(dtype=)"])
def test_patched_build_keeps_the_dtype_a_move_names(how: str) -> None:
    """The patched build drops device moves, not casts: `.to(torch.bfloat16)` before `.to("cpu")` (which
    sends the build to the patched path), or `.to("cpu", torch.bfloat16)`, leaves bf16 weights, as the
    real build does; integer buffers stay integers."""

    def build() -> nn.Module:
        if how == "to(dtype)":
            return _cast_then_moved(torch.bfloat16, "cpu")
        model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
        model.register_buffer("steps", torch.zeros(2, dtype=torch.int64))
        if how == "to(device, dtype)":
            return model.to("cpu", torch.bfloat16)
        return model.cpu().to(device=torch.device("cpu"), dtype=torch.bfloat16)

    real = build()
    built = build_on_meta(build, {}, "build")
    assert built.path.startswith("patched")
    assert [(n, t.dtype) for n, t in built.model.state_dict().items()] == [
        (n, t.dtype) for n, t in real.state_dict().items()
    ]
    assert {t.dtype for t in built.model.parameters()} == {torch.bfloat16}
    assert all(t.device.type == "meta" for t in built.model.state_dict().values())

"""The rule registry keyed by op objects: a string, an OpOverloadPacket or a duplicate is refused, an optional
op that does not resolve is skipped and listed (`memtrace --version --verbose`), and every rule the engine
loads is keyed by an OpOverload and found by the op the dispatcher hands over."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch._ops import OpOverload

from memtrace import __version__
from memtrace.cli.main import main
from memtrace.tracer.core import registry
from memtrace.tracer.core.registry import OptionalOp, Workspace, is_op_overload, optional, rule, rules_for
from memtrace.tracer.engine.device_model import (
    DEVICES,
    DeviceModel,
    device_rules,
    resolve_optional,
    skipped_optional_ops,
)

aten = torch.ops.aten
MISSING_OP = "memtrace_test_absent::no_such_op.default"
MISSING_OVERLOAD = "aten::mm.no_such_overload"


def _nothing(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    return None


@pytest.fixture()
def scratch_rules(monkeypatch: pytest.MonkeyPatch) -> dict[tuple[str, object], Any]:
    """The registry's rules as loaded, in a copy the test may add to; rules for a library's ops that do not
    resolve here (bitsandbytes not imported) are left out, so the test's own are the only ones skipped."""
    device_rules("cpu")  # load every device module first: their rules land in the copy
    table = {
        key: fn
        for key, fn in registry._RULES.items()
        if not isinstance(key[1], OptionalOp) or resolve_optional(key[1].name)[0] is not None
    }
    monkeypatch.setattr(registry, "_RULES", table)
    return table


def test_a_string_op_is_refused_at_registration() -> None:
    with pytest.raises(ValueError, match=r"string 'aten\.mm\.default'.*register the op object"):
        rule("cpu", "aten.mm.default")


def test_a_packet_is_refused_at_registration() -> None:
    with pytest.raises(
        ValueError, match=r"OpOverloadPacket aten\.mm: name one overload \(aten\.mm\.default\)"
    ):
        rule("cpu", aten.mm)


def test_an_object_that_is_no_op_is_refused() -> None:
    with pytest.raises(ValueError, match="no OpOverload"):
        rule("cuda", len)


def test_a_misspelt_op_fails_where_it_is_named() -> None:
    with pytest.raises(AttributeError):
        rule("cpu", aten.mmm.default)


def test_a_duplicate_is_refused(scratch_rules: dict[tuple[str, object], Any]) -> None:
    before = dict(scratch_rules)
    with pytest.raises(
        ValueError, match=r"workspace rule for aten\.mm\.default on cpu is already registered"
    ):
        rule("cpu", aten.mm.default)(_nothing)
    assert scratch_rules == before


def test_an_optional_op_resolving_to_a_registered_one_is_a_duplicate(
    scratch_rules: dict[tuple[str, object], Any],
) -> None:
    rule("cpu", optional("aten::mm.default"))(_nothing)
    with pytest.raises(ValueError, match=r"aten\.mm\.default on cpu is already registered"):
        device_rules("cpu")


def test_an_optional_op_is_named_with_its_namespace() -> None:
    for bad in ("aten.mm.default", "aten::mm", "torchvision::nms", ""):
        with pytest.raises(ValueError, match=r"namespace::op\.overload"):
            optional(bad)
    assert optional("torchvision::nms.default") == OptionalOp("torchvision::nms.default")


def test_an_optional_op_that_resolves_joins_the_table(scratch_rules: dict[tuple[str, object], Any]) -> None:
    assert aten.mv.default not in device_rules("cpu")[0]
    rule("cpu", optional("aten::mv.default"))(_nothing)
    table, skipped = device_rules("cpu")
    assert table[aten.mv.default] is _nothing
    assert skipped == []


def test_an_optional_op_that_does_not_exist_is_skipped_and_listed(
    scratch_rules: dict[tuple[str, object], Any],
) -> None:
    rule("cpu", optional(MISSING_OP), optional(MISSING_OVERLOAD))(_nothing)
    table, skipped = device_rules("cpu")
    assert _nothing not in table.values()
    assert [(s.device, s.name) for s in skipped] == [("cpu", MISSING_OP), ("cpu", MISSING_OVERLOAD)]
    assert "no such op" in skipped[0].reason
    assert "has no overload 'no_such_overload'" in skipped[1].reason
    assert [s.name for s in skipped_optional_ops()] == [MISSING_OP, MISSING_OVERLOAD]
    assert (
        DeviceModel("cpu").workspace(aten.mm.default, (torch.ones(2, 2), torch.ones(2, 2)), {}, None) is None
    )


def test_every_registered_rule_is_keyed_by_an_op_overload() -> None:
    for device in DEVICES:
        table, _ = device_rules(device)
        assert table, device
        assert all(isinstance(op, OpOverload) for op in table), device
        assert all(isinstance(op, OpOverload | OptionalOp) for op in rules_for(device)), device
    assert aten.convolution.default in device_rules("cpu")[0]
    assert aten._scaled_dot_product_flash_attention_backward.default in device_rules("cuda")[0]


def test_the_op_object_is_duck_typed_without_torch_in_core() -> None:
    assert is_op_overload(aten.mm.default)
    assert not is_op_overload(aten.mm)
    assert not is_op_overload("aten.mm.default")

    class OpOverload:  # the name alone is not enough
        pass

    assert not is_op_overload(OpOverload())


def test_the_lookup_is_by_the_op_object() -> None:
    cpu = DeviceModel("cpu")
    a = torch.ones(1, 2).expand(8, 2)  # stride 0: BLAS cannot read it in place, copied inside the kernel
    b = torch.ones(2, 3)
    ws = cpu.workspace(aten.mm.default, (a, b), {}, None)
    assert ws is not None and [s.kind for s in ws.steps] == ["output", "alloc"]
    # another overload is its own key: mm(out=) (inductor's extern_kernels.mm) is registered by itself
    buf = torch.empty(8, 3)
    out_ws = cpu.workspace(aten.mm.out, (a, b), {"out": buf}, buf)
    assert out_ws is not None and [s.kind for s in out_ws.steps] == ["output", "alloc"]
    assert cpu.rule(aten.matmul.out) is None and cpu.rule(aten.matmul.default) is None
    with pytest.raises(TypeError, match="the op object"):
        cpu.workspace("aten.mm.default", (a, b), {}, None)


def _run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 0  # the version option exits with 0 (returned: click runs not standalone)
    return capsys.readouterr().out


def test_version_alone_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run_cli(["--version"], capsys) == f"memtrace, version {__version__}\n"


def test_version_verbose_lists_the_counts_and_the_skipped_ops(
    scratch_rules: dict[tuple[str, object], Any], capsys: pytest.CaptureFixture[str]
) -> None:
    rule("cuda", optional(MISSING_OP))(_nothing)
    out = _run_cli(["--version", "--verbose"], capsys)
    lines = out.splitlines()
    assert lines[0] == f"memtrace, version {__version__}"
    assert lines[1] == f"torch {torch.__version__}"
    for device in DEVICES:
        count = len(device_rules(device)[0])
        patches = len(registry.patches_for(device))
        assert f"{device}: {count} workspace rules, {patches} kernel patches" in lines
    assert "optional ops skipped:" in lines
    skipped = [line for line in lines if MISSING_OP in line]
    assert len(skipped) == 1 and skipped[0].startswith("  cuda ") and "no such op" in skipped[0]
    assert _run_cli(["--verbose", "--version"], capsys) == out


def test_version_verbose_says_when_nothing_is_skipped(capsys: pytest.CaptureFixture[str]) -> None:
    if skipped_optional_ops():
        pytest.skip("this installation skips optional ops")
    assert _run_cli(["--version", "--verbose"], capsys).endswith("optional ops skipped: none\n")

"""tracer/engine/data_dependent.py: known values kept beside meta tensors, the `nonzero` and `item` policies
(default and `--assume`), a logged `.item()` given a placeholder, and an unbounded one refused; small meta
tensors under `resolving` alone (no model, no recorder)."""

from __future__ import annotations

import pytest
import torch

from memtrace.tracer.core.assume import Policy
from memtrace.tracer.core.errors import DataDependentError
from memtrace.tracer.core.records import LOGGED, Assumption
from memtrace.tracer.engine.data_dependent import resolving
from memtrace.tracer.engine.data_observer import resolved_alone
from memtrace.tracer.engine.known_values import KnownValues

N = 16


def _meta(n: int = N) -> torch.Tensor:
    return torch.empty(n, device="meta")


def test_known_values_by_storage_and_layout() -> None:
    known = KnownValues()
    t = torch.empty(2, 3, device="meta")
    value = torch.arange(6.0).view(2, 3)
    known.put(t, value)
    assert known.get(t) is value
    assert known.get(t.t()) is None  # a view of the same storage has a layout of its own
    row = t[1]
    known.put(row, value[1])
    assert torch.equal(known.get(t[1]), value[1])  # type: ignore[arg-type]
    assert known.get(torch.empty(2, 3, device="meta")) is None  # another storage
    known.put(t, torch.zeros(3))  # a value of another shape is not kept
    assert known.get(t) is value
    known.forget(t)
    assert known.get(t) is None and known.get(row) is None  # forgotten for the whole storage


def test_known_values_die_with_their_storage() -> None:
    known = KnownValues()
    t = torch.empty(4, device="meta")
    known.put(t, torch.ones(4))
    assert known.get(t) is not None
    del t
    assert known.get(torch.empty(4, device="meta")) is None


def test_nonzero_keeps_every_element_by_default() -> None:
    with resolving(Policy(), lambda: "mask") as used, resolved_alone():
        kept = torch.nonzero(_meta() > 0)
    assert kept.shape == (N, 1)
    assert used == [Assumption("nonzero", "mask", f"all {N} elements kept", "default")]


def test_nonzero_counts_given_per_call() -> None:
    with resolving(Policy((("nonzero", "3,5"),)), lambda: "mask") as used, resolved_alone():
        first, second = torch.nonzero(_meta() > 0), torch.nonzero(_meta() < 0)
    assert (first.shape[0], second.shape[0]) == (3, 5)
    assert [(a.value, a.source) for a in used] == [
        (f"3 of {N} kept", "--assume"),
        (f"5 of {N} kept", "--assume"),
    ]


def test_known_inputs_need_no_policy() -> None:
    """Values made on the CPU and moved to meta are known: nonzero and `.item()` compute them."""
    with resolving(Policy(), lambda: "m") as used, resolved_alone():
        y = torch.tensor([1, 0, 3, 0, 5]).to("meta")
        assert torch.nonzero(y).shape == (3, 1)
        assert (y > 0).sum().item() == 3
    assert used == []


def test_item_values_given_in_call_order() -> None:
    with resolving(Policy((("item", "2.5,7"),)), lambda: "m") as used, resolved_alone():
        first, second = _meta().sum().item(), _meta().amax().item()
    assert (first, second) == (2.5, 7.0)
    assert [(a.op, a.value, a.source) for a in used] == [
        ("item", "2.5 (call 0)", "--assume"),
        ("item", "7.0 (call 1)", "--assume"),
    ]


def test_a_logged_item_gets_a_placeholder() -> None:
    """A floating value read outside any module's forward (a loss printed) is logged: a placeholder, said."""
    with resolving(Policy(), lambda: "m", in_model=lambda: False) as used, resolved_alone():
        value = _meta().sum().item()
    assert value == 0.0
    [logged] = used
    assert (logged.op, logged.value, logged.source) == (".item() (logged)", "0.0", LOGGED)
    assert logged.module.endswith(f"{__file__.rpartition('/')[2]}:{_line_of('value = _meta().sum().item()')}")


def test_an_unbounded_item_in_a_module_is_one_line() -> None:
    with (
        resolving(Policy(), lambda: "gate") as used,
        resolved_alone(),
        pytest.raises(DataDependentError) as exc,
    ):
        _meta().sum().item()
    text = str(exc.value)
    assert "\n" not in text and "in module 'gate'" in text and "--assume item=V" in text
    assert used == []


def _line_of(needle: str) -> int:
    with open(__file__) as source:
        return next(i for i, line in enumerate(source, 1) if needle in line and "_line_of" not in line)

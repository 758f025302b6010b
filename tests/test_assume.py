"""The assumption policy: parsing --assume, the routing choices, the record in the Result, and the errors."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from memtrace.cli.main import cli
from memtrace.tracer.assume import Policy, assignment, expert_counts, parse_assume, token_groups
from memtrace.tracer.errors import MemtraceError
from memtrace.tracer.records import Assumption, Result
from memtrace.tracer.simulate import Config, simulate


def test_parse_assume_keys_and_values() -> None:
    assert parse_assume("moe.routing=worst") == ("moe.routing", "worst")
    assert token_groups("3,1;2,2") == ((3, 1), (2, 2))
    for bad in ("moe.routing", "foo=1", "moe.routing=most", "moe.tokens=1,x", "moe.tokens=-1,3"):
        with pytest.raises(MemtraceError):
            parse_assume(bad)


def test_policy_sources() -> None:
    policy = Policy((("moe.routing", "worst"),))
    assert policy.value("moe.routing") == ("worst", "--assume")
    assert policy.value("check") == ("pass", "default")


def test_routing_counts_and_assignment() -> None:
    assert expert_counts(10, 2, 4, "balanced") == (5, 5, 5, 5)
    assert expert_counts(5, 2, 3, "balanced") == (4, 3, 3)
    assert expert_counts(10, 2, 4, "worst") == (10, 10, 0, 0)
    counts = (10, 0, 7, 3)
    picks = assignment(counts, 10, 2)
    assert all(len(set(p)) == 2 for p in picks)  # k distinct experts per token
    assert tuple(sum(e in p for p in picks) for e in range(4)) == counts


class _Masked(nn.Module):
    """A data-dependent size with no known values: nonzero of the input, and a Python check."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.sum() > -1e9).item():
            idx = torch.nonzero(x[:, 0] > 0).squeeze(1)
            return self.lin(x[idx])
        return self.lin(x)


def test_unknown_nonzero_and_check_are_recorded() -> None:
    result = simulate(_Masked(), ["16x8"], device="cpu")
    ops = {(a.op, a.value, a.source) for a in result.assumptions}
    assert ("nonzero", "all 16 elements kept", "default") in ops
    assert ("item (bool)", "true: the check passes", "default") in ops
    again = Result.from_json(result.to_json())
    assert again.assumptions == result.assumptions
    assert isinstance(again.assumptions[0], Assumption)


class _Unique(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.unique(x) * 2


def test_unbounded_op_names_op_module_and_keys() -> None:
    with pytest.raises(MemtraceError, match=r"aten::_unique2 in module '_Unique' .*--assume key"):
        simulate(_Unique(), ["16"], device="cpu", mode="infer")


def test_cli_refuses_a_bad_assume() -> None:
    out = CliRunner().invoke(cli, ["trace", "x.py:f", "--assume", "moe.routing=most"])
    assert out.exit_code == 2
    assert "moe.routing=most: expected balanced|worst" in out.output


def test_config_refuses_a_bad_pair() -> None:
    with pytest.raises(MemtraceError, match="unknown key"):
        Config(assume=(("nms.keep", "0.3"),))

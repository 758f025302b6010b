"""The assumption policy: parsing --assume, the routing choices, the record in the Result, and the errors."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from memtrace.cli.main import cli
from memtrace.tracer.core.assume import Counts, Policy, assignment, expert_counts, parse_assume, token_groups
from memtrace.tracer.core.errors import MemtraceError
from memtrace.tracer.core.records import Assumption, Result
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
        Config(assume=(("boxes.keep", "0.3"),))


def test_measured_counts_parse_per_call_and_per_step() -> None:
    from memtrace.tracer.core.assume import item_value, kept_boxes, kept_elements, measured_values, needed

    assert parse_assume("nms.keep=0.3") == ("nms.keep", "0.3")
    assert kept_boxes("0.3", 1000, 5) == 300
    assert kept_boxes("1.0", 7, 0) == 7
    assert kept_boxes("120,98", 1000, 0) == 120
    assert kept_boxes("120,98", 1000, 9) == 98  # the last repeats
    assert kept_boxes("120,98", 50, 0) == 50  # never more than the boxes given
    assert kept_boxes("5,6/7,8", 100, 1, step=1) == 8
    assert kept_elements("all", 40, 3) == 40
    assert kept_elements("3,0,5/1", 40, 1) == 0
    assert kept_elements("3,0,5/1", 40, 2, step=4) == 1
    assert item_value("275,1,0.5", 2) == 0.5
    for bad in ("nms.keep=0.0", "nms.keep=1.5", "nms.keep=a", "nms.keep=-1,2", "nonzero=some", "item=x"):
        with pytest.raises(MemtraceError):
            parse_assume(bad)
    steps: list[tuple[Counts, Counts, Counts]] = [
        ([3, 0], [7], [True, 2.5]),
        ([3, 0], [6], [True, 2.5]),
    ]
    pairs = measured_values(steps)
    assert pairs == (("nonzero", "3,0"), ("nms.keep", "7/6"), ("item", "1,2.5"))
    assert needed(pairs, {"nms"}) == (("nms.keep", "7/6"),)


class _LoaderMasks(nn.Module):
    """Index with a mask computed from data a loader made on the CPU (known), then with one from the
    activations (unknown): the first is exact, the second takes the nonzero policy."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4096, 4096)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        labels = torch.tensor([0, 3, 0, 1, 0, 0]).to(x.device)  # as a data loader's targets
        kept = self.lin(x)[labels > 0]  # 2 rows, known
        chosen = torch.where(labels == 0)[0]  # 4, known
        picks = torch.randperm(chosen.numel(), device=x.device)[:3]
        rows = x[chosen[picks]]
        strong = self.lin(x)[:, 0] > 0  # unknown
        return kept.sum() + rows.sum() + self.lin(x[strong]).sum()


def test_known_values_flow_from_cpu_data_through_masks_and_randperm() -> None:
    result = simulate(_LoaderMasks(), ["6x4096"], device="cpu", mode="infer")
    assert [(a.op, a.value) for a in result.assumptions] == [("nonzero", "all 6 elements kept")]
    given = simulate(_LoaderMasks(), ["6x4096"], device="cpu", mode="infer", assume=(("nonzero", "2,4,0"),))
    assert [(a.op, a.value, a.source) for a in given.assumptions] == [("nonzero", "0 of 6 kept", "--assume")]
    assert given.peak.bytes < result.peak.bytes  # no row kept: the last Linear's output is empty

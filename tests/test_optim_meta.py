"""Fused optimizers (`fused=True`) on meta: PyTorch's fused kernels, held against the CPU allocator, which
runs them too."""

from __future__ import annotations

import pytest
from accuracy import compare
from zoo import ZOO_BY_NAME

from memtrace.tracer.simulate import simulate

FUSED = ["adamw:fused=true", "adam:fused=true", "sgd:fused=true,momentum=0.9", "adagrad:fused=true"]


@pytest.mark.parametrize("optimizer", FUSED)
@pytest.mark.parametrize("name", ["mlp", "transformer_sdpa"])
def test_fused_optimizers_match_the_allocator(name: str, optimizer: str) -> None:
    cmp = compare(ZOO_BY_NAME[name], "train", optimizer)
    assert abs(cmp.error) <= 0.001, f"predicted {cmp.predicted:,} vs measured {cmp.measured:,}"


def test_fused_adamw_on_cuda_holds_no_foreach_temporary() -> None:
    """CUDA's default Adam (foreach) makes parameter-sized temporaries; the fused kernel updates in place."""
    build = ZOO_BY_NAME["mlp"].build
    fused = simulate(build, ["64x512"], optimizer="adamw:fused=true")
    foreach = simulate(build, ["64x512"], optimizer="adamw")
    assert fused.peak_bytes < foreach.peak_bytes
    assert fused.optimizer == "adamw:fused=True"


@pytest.mark.parametrize("optimizer", ["adamw:capturable=true", "adam:capturable=true,foreach=true"])
def test_capturable_optimizers_run_on_meta(optimizer: str) -> None:
    res = simulate(ZOO_BY_NAME["mlp"].build, ["64x512"], optimizer=optimizer)
    plain = simulate(ZOO_BY_NAME["mlp"].build, ["64x512"], optimizer=optimizer.split(":")[0])
    assert res.peak_bytes >= plain.peak_bytes > 0


def test_a_users_own_fused_optimizer_in_a_step() -> None:
    import torch

    made: list[torch.optim.Optimizer] = []

    def step(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], optimizer: object) -> None:
        if not made:
            made.append(torch.optim.AdamW(model.parameters(), fused=True))
        model(inputs[0]).sum().backward()
        made[0].step()
        made[0].zero_grad()

    res = simulate(ZOO_BY_NAME["mlp"].build, ["64x512"], step=step, optimizer="none")
    state = res.peak.by_category
    assert made and state[next(c for c in state if c.value == "optimizer_state")] > 0

"""mse_loss's kernel against the CPU allocator: a full-size output storage and a full-size intermediate."""

from __future__ import annotations

import pytest
import torch
from reference import measured_op_rise, predicted_op_rise

MSE = torch.ops.aten.mse_loss.default


@pytest.mark.parametrize("reduction", [0, 1, 2])
@pytest.mark.parametrize("shapes", [((2, 3, 64, 64), (2, 3, 64, 64)), ((64, 10), (64, 1))])
def test_mse_loss_rise(reduction: int, shapes: tuple[tuple[int, ...], tuple[int, ...]]) -> None:
    a, b = torch.randn(shapes[0]), torch.randn(shapes[1])
    assert predicted_op_rise(MSE, (a, b, reduction)) == measured_op_rise(MSE, (a, b, reduction))


def test_the_scalar_loss_keeps_a_full_size_storage() -> None:
    a, b = torch.randn(8, 1000), torch.randn(8, 1000)
    assert MSE(a, b, 1).untyped_storage().nbytes() == a.numel() * 4  # what the rule models

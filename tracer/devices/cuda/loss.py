"""CUDA loss kernels: `mse_loss`'s full-size output storage and intermediate (devices/shared.py; the
structured kernel is the same as the CPU's, and CUDA's `mean_out` books no scalar)."""

from __future__ import annotations

from typing import Any

import torch

from ...core.registry import Workspace, rule
from ..shared import mse_loss

aten = torch.ops.aten


@rule("cuda", aten.mse_loss.default)
def mse(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    return mse_loss("cuda", args, kwargs)

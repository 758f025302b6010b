"""Which tensors are the simulation's: meta tensors, or FakeTensors (DDP and FSDP2 run under
FakeTensorMode)."""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import FakeTensor


def simulated(t: torch.Tensor) -> bool:
    """A tensor of the simulation: on meta, or a FakeTensor (DDP and FSDP2 run under FakeTensorMode)."""
    return t.device.type == "meta" or isinstance(t, FakeTensor)

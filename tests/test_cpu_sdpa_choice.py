"""The CPU's SDPA backend choice on transposed operands, and the step's peak against the CPU allocator.

PyTorch's CPU flash kernel needs the last dimension of q, k and v at stride 1
(`check_last_dim_stride_equals_1_dense`); a U-Net's attention over `(b, heads, c, h*w)` maps transposes it
away, so the math path runs (its `(L, L)` score matrices dominate). The choice is asked of stand-in tensors
that keep that stride (tracer/devices/cpu/attention.py). Independent of the ISA.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from accuracy import compare
from torch import nn
from zoo import ZooCase

from memtrace.tracer.devices.cpu.attention import _stand_in

TOLERANCE = 0.005


class _PixelAttention(nn.Module):
    """Self-attention over the pixels of a map, as benchmarks/models/unet.py's AttnBlock."""

    def __init__(self, channels: int, heads: int, transposed: bool) -> None:
        super().__init__()
        self.qkv, self.heads, self.transposed = nn.Conv2d(channels, 3 * channels, 1), heads, transposed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(x).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        q, k, v = (t.transpose(-1, -2) for t in (q, k, v))
        if not self.transposed:
            q, k, v = (t.contiguous() for t in (q, k, v))
        return x + F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, c, h, w)


@pytest.mark.parametrize("transposed", [True, False])
def test_stand_in_choice_is_pytorchs(transposed: bool) -> None:
    q, k, v = torch.randn(2, 3, 4, 16, 64).unbind(1)
    q, k, v = (t.transpose(-1, -2) for t in (q, k, v))
    if not transposed:
        q, k, v = (t.contiguous() for t in (q, k, v))
    real = int(torch._fused_sdp_choice(q, k, v))
    assert int(torch._fused_sdp_choice(_stand_in(q), _stand_in(k), _stand_in(v))) == real


@pytest.mark.parametrize("transposed", [True, False])
def test_stand_in_choice_under_a_meta_default_device(transposed: bool) -> None:
    """The parameter probe runs under `torch.device("meta")`: the stand-ins stay CPU tensors, the choice
    PyTorch's for the CPU."""
    q, k, v = torch.randn(2, 3, 4, 16, 64).unbind(1)
    q, k, v = (t.transpose(-1, -2) for t in (q, k, v))
    if not transposed:
        q, k, v = (t.contiguous() for t in (q, k, v))
    real = int(torch._fused_sdp_choice(q, k, v))
    with torch.device("meta"):
        ins = [_stand_in(t.to("meta")) for t in (q, k, v)]
    assert all(t is not None and t.device.type == "cpu" for t in ins)
    assert int(torch._fused_sdp_choice(*ins)) == real


@pytest.mark.parametrize("transposed", [True, False], ids=["math", "flash"])
@pytest.mark.parametrize("mode", ["train", "infer"])
def test_peak_matches_the_allocator(transposed: bool, mode: str) -> None:
    shape = ((2, 32, 16, 16), "float32")
    case = ZooCase(f"pixel-attention-{transposed}", lambda: _PixelAttention(32, 4, transposed), (shape,))
    cmp = compare(case, mode, "sgd")
    assert abs(cmp.error) < TOLERANCE, (
        f"{mode}: predicted {cmp.predicted:,} vs measured {cmp.measured:,} ({100 * cmp.error:+.3f}%)"
    )

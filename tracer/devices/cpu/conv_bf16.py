"""oneDNN's bfloat16 convolution forward on AVX-512-BF16 (no AMX): the blocked operands and the scratchpad
of `jit_avx512_core_bf16_convolution_fwd_t` and `jit_avx512_core_bf16_1x1_convolution_fwd_t`, as the CPU
allocator sees them inside `mkldnn_convolution`.

PyTorch sends a bf16 convolution to oneDNN whenever `mkldnn_bf16_device_check()` holds (any size); on an
AVX-512-BF16 CPU without AMX (`cpu_isa.onednn_isa()` is avx512_core_bf16) oneDNN runs these kernels. Derived
from the allocator events recorded op by op on such a CPU (shared/measured/cpu-avx512-bf16, held in
tests/test_rules_isa.py) and oneDNN's `init_scratchpad`:

- the source is reordered to nChw16c (16 channels a block, padded) unless it has fewer than 16 channels
  (the first-layer kernel reads plain NCHW);
- the weights to OIhw8i16o2i: output channels padded to 16, input channels to 16, or to a pair (VNNI) below
  16; the output is computed blocked (padded to 16) and then copied into the dense result;
- scratchpad: a padded bias (when the output channels are padded) and, for 1x1, a float accumulation block
  per thread of (output channels padded to 16) x (output pixels).

The backward passes, grouped and depthwise, strided 1x1 (rtus) and channels-last bf16 convolutions are not
modelled here (outputs only); nor fp16, nor AMX (brgemm kernels) or AVX-512 without BF16 (emulation). One
recorded 1x1 (192 output channels, 16x16 pixels) booked 3,072 bytes more than this model (0.8% of its
accumulation block): not explained.
"""

from __future__ import annotations

import torch

from . import isa as cpu_isa
from .conv_onednn import Blocked, Conv

_ALIGN = 128  # oneDNN's scratchpad entries are aligned to 128 bytes
_BLOCK = 16


def _rup(a: int, b: int) -> int:
    return -(-a // b) * b


def _entry(nbytes: int) -> int:
    return nbytes + _ALIGN if nbytes > 0 else 0


def bf16_modelled(cv: Conv) -> bool:
    """oneDNN's AVX-512-BF16 kernels run this bf16 convolution, and its shape is one modelled here."""
    return (
        cv.dtype == torch.bfloat16
        and cv.plain
        and cv.g == 1
        and torch.backends.mkldnn.is_available()
        and cpu_isa.onednn_isa() == "avx512_core_bf16"
    )


def is_1x1(cv: Conv) -> bool:
    return cv.kh == cv.kw == 1 and cv.ph == cv.pw == 0 and not cv.strided


def bf16_layout(cv: Conv) -> Blocked:
    """Element counts of the reordered source (0: plain), weights and blocked destination."""
    o = _rup(cv.o, _BLOCK)
    c = _rup(cv.c, _BLOCK) if cv.c >= _BLOCK else _rup(cv.c, 2)
    src = cv.n * c * cv.h * cv.w if cv.c >= _BLOCK else 0
    return Blocked(src, o * c * cv.kh * cv.kw, cv.n * o * cv.ho * cv.wo)


def bf16_forward_scratch(cv: Conv) -> int:
    """The padded bias (bf16) and, for 1x1, the per-thread float accumulation block."""
    o = _rup(cv.o, _BLOCK)
    total = _entry(cv.bytes(o)) if cv.bias and o != cv.o else 0
    if is_1x1(cv):
        total += _entry(cv.nthr * o * cv.ho * cv.wo * 4)
    return total

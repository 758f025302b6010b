"""oneDNN's bfloat16 convolutions on AVX-512-BF16 (no AMX): the blocked operands and the scratchpads of
`jit_avx512_core_bf16_convolution_{fwd,bwd_data,bwd_weights}_t` and the 1x1 forward, as the CPU allocator
sees them inside `mkldnn_convolution` and `convolution_backward`.

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

- backward data (direct kernel): the blocked diff-dst, weights and diff-src, no scratchpad;
- backward weights (direct kernel, unit stride): see `bf16_weights_scratch`.

Not modelled here (outputs only): the 1x1 and strided backward passes, grouped and depthwise, strided 1x1
(rtus) and channels-last bf16 convolutions; fp16; AMX (brgemm kernels) and AVX-512 without BF16 (emulated
bf16). One recorded 1x1 (192 output channels, 16x16 pixels) booked 3,072 bytes more than this model (0.8%
of its accumulation block): not explained. Recorded at 2 threads only: the thread split is from the source.
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


# --------------------------------------------------------------------------- backward (direct kernels only)


def bf16_backward_modelled(cv: Conv, grad_input: bool) -> bool:
    """The backward passes modelled: the direct kernel (not 1x1) at unit stride; a first layer (fewer than
    16 input channels) only without its input gradient."""
    return not is_1x1(cv) and not cv.strided and (cv.c >= _BLOCK or not grad_input)


def bf16_weights_scratch(cv: Conv) -> int:
    """`jit_avx512_core_bf16_conv_bwd_weights_kernel_f32::init_scratchpad`: the transposed source (none for
    a first layer) with its two guard elements, the transposed diff-dst, both `tr_w = ow + kw - 1` wide and
    one per minibatch thread and channel block, and the float weight (and bias) reduction buffers, one per
    minibatch thread (the diff-weights are bf16). Minibatch threads: min(threads, batch); verified at 2
    threads and batch 4 only."""
    nthr_mb = min(cv.nthr, cv.n)
    tr_w = cv.wo + cv.kw - 1
    o, c = _rup(cv.o, _BLOCK), _rup(cv.c, _BLOCK)
    tr_src = nthr_mb * c * cv.h * tr_w * cv.elem if cv.c >= _BLOCK else 0
    tr_diff_dst = nthr_mb * o * cv.ho * tr_w * cv.elem
    reduction = nthr_mb * (o * (c if cv.c >= _BLOCK else cv.c) * cv.kh * cv.kw + (o if cv.bias else 0)) * 4
    return _entry(tr_src + 2 * cv.elem) + _entry(tr_diff_dst) + _entry(reduction)

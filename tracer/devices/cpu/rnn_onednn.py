"""oneDNN's buffer sizes for the CPU's LSTM kernels (`rnn.py` emulates the kernels with them).

`mkldnn_rnn_layer` allocates a workspace that autograd saves for backward and, inside ideep, weight reorders
and a scratchpad; `mkldnn_rnn_layer_backward` its own reorders, zeroed diff-weight buffers and scratchpad.
Their sizes follow oneDNN v3.x (src/cpu/rnn/rnn_utils.*, ref_rnn.cpp, x64/rnn/rnn_brgemm_utils.cpp): float32
training uses the reference implementation with gemm-friendly leading dimensions; float32 inference uses the
brgemm implementation (blocked weights, 32 output channels per block on AVX-512). bf16 on AVX-512-BF16 (no
AMX) runs brgemm in training too: its forward has the same sections in 2-byte elements (`ldgOI32o2i` weights,
bf16 states, hidden and bias; float gates), its backward is `rnn_bf16_backward`. Checked byte for byte live
on such a CPU (tests/test_rnn_bf16.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from . import isa as cpu_isa
from .cfloat import f32 as _f32
from .cfloat import rup as _rnd_up

_F32 = 4  # bytes per float32 element
_BF16 = 2  # bytes per bfloat16 element
GATES = 4  # LSTM gates
_PAGE = 4096  # oneDNN's rnn workspace/scratchpad sections are page aligned
_ALIGN = 128  # oneDNN scratchpad registry's default alignment per booked buffer
_BATCH_ELEMENT = 40  # sizeof(brgemm_batch_element_t)

# --------------------------------------------------------------------------- oneDNN buffer sizes


def good_ld(dim: int, elem: int = _F32) -> int:
    """oneDNN's gemm leading dimension: 64-byte aligned, never a multiple of 256 elements (4K aliasing)."""
    ld = _rnd_up(dim, 64 // elem)
    return ld + 64 // elem if ld % 256 == 0 else ld


def _sections(sizes: Sequence[int], start: int = 0) -> int:
    """oneDNN's `register_space`: each section starts page aligned."""
    offset = start
    for size in sizes:
        offset = _rnd_up(offset, _PAGE) + size
    return offset


@dataclass(frozen=True)
class Layer:
    """One `mkldnn_rnn_layer` call: sequence length, batch, input size, hidden size (float32)."""

    t: int
    b: int
    i: int
    h: int
    bf16: bool = False  # oneDNN's bf16 LSTM on AVX-512-BF16 (no AMX)

    @property
    def elem(self) -> int:
        """Bytes per element of the states, hidden output, weights and bias."""
        return _BF16 if self.bf16 else _F32

    @property
    def states(self) -> int:
        """Rows of the per-timestep state buffers: (layers + 1) * directions * (T + 1) * batch."""
        return 2 * (self.t + 1) * self.b

    def workspace(self) -> int:
        """Bytes of the training workspace (`pd.workspace_desc().get_size()`); in bf16 the forward sections
        hold bf16, the diff states float."""
        t, b, h, wide = self.t, self.b, self.h, max(self.i, self.h)
        e = 2 if self.bf16 else _F32
        return _sections(
            [
                t * b * good_ld(GATES * h, e) * e,  # ws_gates
                t * b * good_ld(h, e) * e,  # ws_ht
                self.states * good_ld(wide, e) * e,  # ws_states_layer (== iter)
                self.states * h * e,  # ws_states_iter_c
                self.states * good_ld(wide) * _F32,  # ws_diff_states_layer
                self.states * good_ld(wide) * _F32,  # ws_diff_states_iter
                self.states * h * _F32,  # ws_diff_states_iter_c
                0,  # ws_grid_comp (page-aligns the end)
            ]
        )

    def _scratch(self, rnn_space: int, gate_steps: int, training: bool, e: int = _F32) -> int:
        """The scratchpad after `rnn_space`: float gates, the hidden state in `e`-byte elements, then the
        weights/bias pointer arrays (`key_rnn_ptrs_bia` books 8 bytes per byte of the bias type)."""
        b, h = self.b, self.h
        space = _sections(
            [
                _F32 * gate_steps * b * good_ld(GATES * h),  # scratch_gates
                e * b * good_ld(h, e),  # scratch_ht
                _F32 * b * good_ld(h) if training else 0,  # scratch_diff_ht
                0,  # scratch_cell
            ],
            rnn_space,
        )
        pointers = 3 * (8 + _ALIGN) + (8 * e + _ALIGN)  # weights/bias pointer arrays
        return space + _PAGE + pointers

    def scratch_forward(self) -> int:
        """Training forward: gemms merged over time when the batch is under 128."""
        return self._scratch(0, self.t if self.b < 128 else 1, True)

    def scratch_backward(self) -> int:
        return self._scratch(0, self.t, True)

    def scratch_inference(self, threads: int) -> int:
        """brgemm inference: no workspace, its state buffers go to the scratchpad."""
        e = self.elem
        layer_states = self.states * good_ld(max(self.i, self.h), e) * e
        states = _sections([0, 0, layer_states, self.states * self.h * e, 0, 0, 0, 0])
        return self.scratch_brgemm(states, False, threads)

    def scratch_brgemm(self, rnn_space: int, training: bool, threads: int) -> int:
        """The brgemm forward's scratchpad after `rnn_space`: gates of every timestep when a batch of one
        merges the layer gemm, plus the brgemm batches (one K block per gemm: oneDNN splits K only for vanilla
        RNN cells and on AMX; twice as many where the layer and iteration gemms fuse)."""
        merged = self.b <= 1 and self.t >= 2
        fused = self.i == self.h and not merged
        batch = 2 * (2 if fused else 1) * threads * _BATCH_ELEMENT + _ALIGN
        return self._scratch(rnn_space, self.t if merged else 1, training, self.elem) + batch

    def ldigo(self, k: int) -> int:
        """Weights (k inputs) in oneDNN's forward layout: k rows of good_ld(4H) (size-1 dims: no stride)."""
        return (k * good_ld(GATES * self.h) if k > 1 else GATES * self.h) * _F32

    def ldgoi(self, k: int) -> int:
        """Weights (k inputs) in oneDNN's backward layout: 4H rows of good_ld(k)."""
        return GATES * self.h * good_ld(k) * _F32

    def blocked(self, k: int, n_block: int) -> int:
        """Weights in brgemm's ldgOi{n}o layout (bf16: ldgOI{n}o2i, inputs padded to pairs): output channels
        padded to the block."""
        pairs = _rnd_up(k, 2) if self.bf16 else k
        return pairs * GATES * _rnd_up(self.h, n_block) * self.elem

    def forward_buffers(self, training: bool, threads: int) -> list[int]:
        """ideep's allocations inside the forward kernel, in order (freed in reverse)."""
        if training and not self.bf16:
            reorders = [self.ldigo(k) for k in (self.i, self.h) if k > 1]
            return [*reorders, self.scratch_forward()]
        nb = _n_block(self.b)
        # bf16 training also runs brgemm, its states in the workspace (float diff_ht: `_scratch`)
        scratch = self.scratch_brgemm(0, True, threads) if training else self.scratch_inference(threads)
        return [self.blocked(self.i, nb), self.blocked(self.h, nb), scratch]

    def backward_buffers(self, threads: int) -> list[int]:
        """ideep's allocations inside the backward kernel, in order (freed in reverse)."""
        if self.bf16:
            return rnn_bf16_backward(self, threads)
        reorders = [self.ldgoi(k) for k in (self.i, self.h) if good_ld(k) != k]
        diff = [self.ldigo(self.i), self.ldigo(self.h), GATES * self.h * _F32]
        return [*reorders, *diff, self.scratch_backward()]


def _n_block(batch: int) -> int:
    """brgemm's output-channel block for float32 LSTM: 2 vectors, 4 on AVX2 with a batch of one.

    The vectors are oneDNN's (`brgemm_calc_isa`: avx512_core where it may use it, else avx2), not ATen's:
    ATEN_CPU_CAPABILITY does not lower them, ONEDNN_MAX_CPU_ISA does.
    """
    if cpu_isa.mayiuse("avx512_core"):
        return 32
    return 32 if batch == 1 else 16


# --------------------------------------------------------------------------- bf16 backward (AVX-512-BF16)
# oneDNN's brgemm backward (x64/rnn/rnn_brgemm_utils.cpp, `rnn_brgemm_t<backward>`), checked live on an
# AVX-512-BF16 CPU without AMX over batch, length, input, hidden sizes and threads: weights reordered to bf16
# blocks of 32 inputs by pairs of outputs; bf16 gates and hidden state, float diff_ht; the brgemm batches;
# per thread a block of 32 gate columns over the batch; the sources transposed for the diff-weights gemm
# (whole for a batch over one, else per thread in row blocks).
_DIFF_BLOCK = 32  # diff_src_conf.n_block, diff_wei_conf.n_block without AMX


def _fraction(x: float) -> float:
    return _f32(x - math.floor(x))


def _m_block_unbalanced(m: int, n_blocks: int, threads: int) -> int:
    """`brgemm_calc_m_block_vanilla_rnn` where the column blocks do not split evenly over the threads, in
    float as oneDNN computes it (the sources are small, so its L2 test never picks the fallback)."""
    tolerance, balanced = _f32(0.01), _f32(0.9)
    best, best_decimal = m // 2, 0.0
    for block in range(m // 2, 7, -1):
        if m % block:
            continue
        decimal = _fraction(_f32((m // block) * n_blocks / threads))
        if decimal > _f32(best_decimal + tolerance):
            best, best_decimal = block, decimal
        if decimal >= balanced or decimal == 0.0:
            return block
    return best if _fraction(_f32(n_blocks / threads)) < best_decimal else m


def diff_wei_m_block(m: int, n_blocks: int, threads: int) -> int:
    """The diff-weights gemm's row block (`brgemm_calc_m_block`, backward, not AMX) over `m` source rows."""
    work = _f32(n_blocks / threads)
    if work < 1.0:  # `adjust_m_block_lstm`
        top = min(24, max(1, m // (4 * -(-threads // n_blocks))))
        return next((block for block in range(top, 3, -1) if m % block == 0), m)
    if 0.0 < _fraction(work) < _f32(0.9):
        return _m_block_unbalanced(m, n_blocks, threads)
    return m


def rnn_bf16_backward(layer: Layer, threads: int) -> list[int]:
    b, h, i = layer.b, layer.h, layer.i
    reorders = [GATES * _rnd_up(h, 2) * _rnd_up(k, _DIFF_BLOCK) * _BF16 for k in (i, h)]
    diff = [layer.ldigo(i), layer.ldigo(h), GATES * h * _F32]
    space = _sections(
        [_BF16 * b * good_ld(GATES * h, _BF16), _BF16 * b * good_ld(h, _BF16), _F32 * b * good_ld(h), 0]
    )
    pointers = 3 * (8 + _ALIGN) + (8 * _BF16 + _ALIGN)
    batch = (GATES + 1) * threads * _BATCH_ELEMENT + _ALIGN  # K blocks: one per gate, plus one
    k = _rnd_up(b, 2)  # the diff-weights gemm reduces over the batch, by pairs
    gates_blocked = threads * k * _DIFF_BLOCK * _BF16 + _ALIGN
    if b > 1:
        rows = [i, h]
    else:
        m_block = max(i, h) if i != h else diff_wei_m_block(h, -(-GATES * h // _DIFF_BLOCK), threads)
        rows = [threads * min(m_block, m) for m in (i, h)]
    transposes = sum(m * k * _BF16 + _ALIGN for m in rows)
    return [*reorders, *diff, space + _PAGE + pointers + batch + gates_blocked + transposes]

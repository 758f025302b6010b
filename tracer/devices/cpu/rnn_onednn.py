"""oneDNN's buffer sizes for the CPU's LSTM kernels (`rnn.py` emulates the kernels with them).

`mkldnn_rnn_layer` allocates a workspace that autograd saves for backward and, inside ideep, weight reorders
and a scratchpad; `mkldnn_rnn_layer_backward` its own reorders, zeroed diff-weight buffers and scratchpad.
Their sizes follow oneDNN v3.x (src/cpu/rnn/rnn_utils.*, ref_rnn.cpp, x64/rnn/rnn_brgemm_utils.cpp): training
uses the reference implementation with gemm-friendly leading dimensions; inference uses the brgemm
implementation (blocked weights, 32 output channels per block on AVX-512), in bf16 with the same sections in
2-byte elements (`ldgOI32o2i` weights, bf16 states, hidden and bias; float gates).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from . import isa as cpu_isa

_F32 = 4  # bytes per float32 element
_BF16 = 2  # bytes per bfloat16 element
GATES = 4  # LSTM gates
_PAGE = 4096  # oneDNN's rnn workspace/scratchpad sections are page aligned
_ALIGN = 128  # oneDNN scratchpad registry's default alignment per booked buffer
_BATCH_ELEMENT = 40  # sizeof(brgemm_batch_element_t)

# --------------------------------------------------------------------------- oneDNN buffer sizes


def _rnd_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


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
    bf16: bool = False  # oneDNN's bf16 LSTM on AVX-512-BF16 (training: `rnn_bf16` below)

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
        """brgemm inference: no workspace, its state buffers go to the scratchpad, plus brgemm batches (one
        K block per gemm: oneDNN splits K only for vanilla RNN cells and on AMX)."""
        merged = self.b <= 1 and self.t >= 2
        e = self.elem
        layer_states = self.states * good_ld(max(self.i, self.h), e) * e
        states = _sections([0, 0, layer_states, self.states * self.h * e, 0, 0, 0, 0])
        fused = self.i == self.h and not merged
        batch = 2 * (2 if fused else 1) * threads * _BATCH_ELEMENT + _ALIGN
        return self._scratch(states, self.t if merged else 1, False, e) + batch

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
        if self.bf16 and training:
            return rnn_bf16_forward(self)
        if training:
            reorders = [self.ldigo(k) for k in (self.i, self.h) if k > 1]
            return [*reorders, self.scratch_forward()]
        nb = _n_block(self.b)
        return [self.blocked(self.i, nb), self.blocked(self.h, nb), self.scratch_inference(threads)]

    def backward_buffers(self) -> list[int]:
        """ideep's allocations inside the backward kernel, in order (freed in reverse)."""
        if self.bf16:
            return rnn_bf16_backward(self)
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


# --------------------------------------------------------------------------- bf16 (AVX-512-BF16, training)
# Fitted to the allocator events recorded on an AVX-512-BF16 CPU without AMX (tests/data/cpu-avx512-bf16,
# a 2-layer bidirectional LSTM, T 32, batch 4, input 64 and 256, hidden 128, 2 threads): the weight reorders
# are unpadded bf16; the scratchpad holds one timestep of float gates; the pointer arrays and the backward's
# bf16 source row block are as measured there. Other shapes follow the same formulas, unverified.
# (bf16 inference is the brgemm path above, `Layer.scratch_inference`/`blocked` with 2-byte elements.)
_FWD_POINTERS, _BWD_POINTERS = 840, 952  # the scratchpad's small registry entries, as recorded


def rnn_bf16_forward(layer: Layer) -> list[int]:
    b, h = layer.b, layer.h
    reorders = [k * GATES * h * _BF16 for k in (layer.i, layer.h)]
    f32 = [_F32 * b * good_ld(GATES * h), _F32 * b * good_ld(h), _F32 * b * good_ld(h), 0]
    return [*reorders, _sections(f32) + _PAGE + _FWD_POINTERS]


def rnn_bf16_backward(layer: Layer) -> list[int]:
    b, h = layer.b, layer.h
    reorders = [GATES * h * k * _BF16 for k in (layer.i, layer.h)]
    diff = [layer.ldigo(layer.i), layer.ldigo(layer.h), GATES * h * _F32]
    gates = _rnd_up(_sections([_F32 * b * good_ld(GATES * h), _F32 * b * good_ld(h)]), _PAGE)
    scratch = gates + _F32 * b * good_ld(h) + _BF16 * b * layer.i + _PAGE + _BWD_POINTERS
    return [*reorders, *diff, scratch]

"""SDPA on a CUDA target: the backend choice against sdp_utils.cpp's rules, linear saved activations with the
fused kernels, and the backward temporaries against flash_api.cpp / attention_backward.cu."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from memtrace.tracer.core.presets import PRESETS
from memtrace.tracer.core.specs import parse_gpu
from memtrace.tracer.devices.cuda import attention as cuda_attention
from memtrace.tracer.devices.cuda.attention import (
    current,
    efficient_backward_sizes,
    efficient_backward_tile,
    flash_backward_sizes,
    flash_forward_splits,
    num_splits_heuristic,
    runtime_flags,
    target,
)
from memtrace.tracer.devices.cuda.sdp_choice import Call, Flags, Gpu, Operand, choose, prefer_cudnn
from memtrace.tracer.engine.device_model import DeviceModel
from memtrace.tracer.engine.recipes import Recipe
from memtrace.tracer.simulate import simulate

_SIZES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}


def _op(shape: tuple[int, ...], dtype: str, grad: bool) -> Operand:
    """A contiguous tensor in (B, S, H, D) memory order viewed as (B, H, S, D), as attention layers make."""
    if len(shape) != 4:
        stride = tuple(int(torch.empty(shape, device="meta").stride()[i]) for i in range(len(shape)))
        return Operand(shape, stride, dtype, _SIZES[dtype], 0, grad)
    _, h, s, d = shape
    return Operand(shape, (s * h * d, d, h * d, 1), dtype, _SIZES[dtype], 0, grad)


def _call(
    dtype: str = "bfloat16",
    hd: int = 64,
    hd_v: int | None = None,
    mask: bool = False,
    dropout: float = 0.0,
    causal: bool = False,
    kv_heads: int = 8,
    gqa: bool = False,
    train: bool = True,
    sq: int = 1024,
    sk: int | None = None,
    dims: int = 4,
) -> Call:
    sk = sk or sq
    q_shape: tuple[int, ...] = (2, 8, sq, hd) if dims == 4 else (16, sq, hd)
    k_shape: tuple[int, ...] = (2, kv_heads, sk, hd) if dims == 4 else (16, sk, hd)
    v_shape: tuple[int, ...] = (2, kv_heads, sk, hd_v or hd) if dims == 4 else (16, sk, hd_v or hd)
    m = Operand((sq, sk), (sk, 1), "bool", 1) if mask else None
    return Call(
        _op(q_shape, dtype, train),
        _op(k_shape, dtype, train),
        _op(v_shape, dtype, train),
        m,
        dropout,
        causal,
        gqa,
        True,
    )


# (name, compute capability, cuDNN version, call, expected backend, the rule of sdp_utils.cpp that decides)
CHOICE_TABLE = [
    ("a100 bf16 causal", "8.0", 91002, _call(causal=True), "flash", "all flash filters pass"),
    ("h100 bf16, cuDNN 9.10", "9.0", 91002, _call(), "flash", "check_prefer_cudnn_attention: cuDNN <= 9.15"),
    ("h100 bf16, cuDNN 9.16", "9.0", 91600, _call(), "cudnn", "priority_order: cuDNN > 9.15 on sm90 first"),
    ("b200 bf16, cuDNN 9.16", "10.0", 91600, _call(), "cudnn", "check_prefer_cudnn_attention: major 10"),
    ("h20 (sm9.0) is major 9", "9.0", 91500, _call(), "flash", "cudnn_version > 91500, strictly"),
    ("rtx4090 cuDNN 9.16", "8.9", 91600, _call(), "flash", "prefer cuDNN only on sm 9.x/10.x"),
    (
        "a100 fp32",
        "8.0",
        91002,
        _call("float32"),
        "efficient",
        "check_dtypes_low_precision; efficient takes fp32",
    ),
    ("a100 mask", "8.0", 91002, _call(mask=True), "efficient", "check_for_attn_mask rejects flash"),
    ("a100 head dim 512", "8.0", 91002, _call(hd=512), "efficient", "check_head_dim_size_flash: <= 256"),
    ("a100 hd_qk != hd_v", "8.0", 91002, _call(hd=64, hd_v=128), "efficient", "flash needs equal head dims"),
    ("a100 head dim 60 bf16", "8.0", 91002, _call(hd=60), "flash", "flash pads the head dim to 8 itself"),
    ("a100 head dim 60 fp32", "8.0", 91002, _call("float32", hd=60), "efficient", "fp32 alignment 4 on sm80"),
    ("a100 head dim 62 fp32", "8.0", 91002, _call("float32", hd=62), "math", "minimum_gemm_alignment 4"),
    ("v100 fp16", "7.0", 91002, _call("float16"), "efficient", "flash needs sm80..sm121"),
    ("v100 bf16", "7.0", 91002, _call("bfloat16"), "math", "efficient below sm80: fp16/fp32 only"),
    ("t4 fp16 hd 60", "7.5", 91002, _call("float16", hd=60), "math", "fp16 on sm75 needs alignment 8"),
    ("p100", "6.0", 91002, _call("float16", hd=64), "efficient", "efficient covers sm50..sm121"),
    ("maxwell-", "3.5", 91002, _call("float16"), "math", "efficient needs sm50"),
    ("a100 dropout 0.1", "8.0", 91002, _call(dropout=0.1), "flash", "flash handles dropout"),
    ("rtx3090 train hd 256 dropout", "8.6", 91002, _call(hd=256, dropout=0.1), "efficient", "gt192 rule"),
    ("rtx3090 train hd 200", "8.6", 91002, _call(hd=200), "efficient", "head dim in (192, 224] on sm86"),
    ("rtx3090 train hd 256", "8.6", 91002, _call(hd=256), "flash", "hd > 224 without dropout is supported"),
    (
        "rtx3090 infer hd 200",
        "8.6",
        91002,
        _call(hd=200, train=False),
        "flash",
        "the rule is for training only",
    ),
    ("a100 train hd 200", "8.0", 91002, _call(hd=200), "flash", "sm80 has the shared memory"),
    ("causal sq != sk", "8.0", 91002, _call(causal=True, sq=128, sk=256), "efficient", "non-square causal"),
    ("gqa enabled", "8.0", 91002, _call(kv_heads=2, gqa=True), "flash", "flash supports GQA"),
    ("gqa heads not dividing", "8.0", 91002, _call(kv_heads=3, gqa=True), "math", "kv heads must divide"),
    ("kv heads differ, no enable_gqa", "8.0", 91002, _call(kv_heads=2), "math", "same num_heads required"),
    ("3-D inputs", "8.0", 91002, _call(dims=3), "math", "check_tensor_shapes: fused kernels need 4-D"),
    ("h100 cuDNN 9.16 mask", "9.0", 91600, _call(mask=True), "cudnn", "cuDNN takes 2-D masks"),
    (
        "h100 cuDNN 9.16 dropout 0.1",
        "9.0",
        91600,
        _call(dropout=0.1),
        "flash",
        "check_cudnn_dropout: 1/16 steps",
    ),
    ("h100 cuDNN 9.16 dropout 1/8", "9.0", 91600, _call(dropout=0.125), "cudnn", "multiple of 1/16"),
    ("h100 cuDNN 9.16 hd 256", "9.0", 91600, _call(hd=256), "flash", "cuDNN head dim limit 128"),
    ("h100 cuDNN 9.16 fp32", "9.0", 91600, _call("float32"), "efficient", "cuDNN: fp16/bf16 only"),
]


@pytest.mark.parametrize(("name", "cc", "cudnn", "call", "expected", "rule"), CHOICE_TABLE, ids=lambda x: "")
def test_backend_choice(name: str, cc: str, cudnn: int, call: Call, expected: str, rule: str) -> None:
    choice = choose(call, Gpu(cc, cudnn), Flags())
    assert choice.backend == expected, f"{name} ({rule}): rejected {choice.rejected}"


def test_rejections_carry_the_failing_filter() -> None:
    choice = choose(_call(mask=True), Gpu("8.0"), Flags())
    assert choice.backend == "efficient"
    assert choice.rejected["flash"].startswith("check_for_attn_mask")


def test_cuda12_wheels_prefer_cudnn_only_on_sm90_and_sm100_103() -> None:
    """`check_prefer_cudnn_attention`: with CUDA < 13, only minor 0 or 3 of major 9/10."""
    assert prefer_cudnn(Gpu("10.3", 91600, "12.8"))
    assert not prefer_cudnn(Gpu("10.1", 91600, "12.8"))
    assert prefer_cudnn(Gpu("10.1", 91600, "13.0"))


def test_flags_follow_sdpa_kernel_and_restrict_a_named_backend() -> None:
    call = _call()
    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
        assert choose(call, Gpu("8.0"), runtime_flags()).backend == "efficient"
    assert choose(call, Gpu("8.0"), runtime_flags("math")).backend == "math"
    assert choose(_call(mask=True), Gpu("8.0"), runtime_flags("flash")).backend == "error"
    with sdpa_kernel([SDPBackend.MATH]):
        assert choose(call, Gpu("8.0"), runtime_flags("flash")).backend == "error"


def test_disabled_everything_is_an_error() -> None:
    flags = Flags(flash=False, efficient=False, math=False, cudnn=False)
    assert choose(_call(), Gpu("8.0"), flags).backend == "error"


def test_target_defaults_and_restores() -> None:
    assert current().gpu.compute_capability == "8.0"
    with target("9.0", 91600, "efficient") as t:
        assert current() is t and t.sm_count == 132
    assert current().backend == "auto"
    with pytest.raises(ValueError), target(backend="fastest"):
        pass


# --- the patch on meta -----------------------------------------------------------------------------------


def _meta_qkv(b: int, h: int, s: int, d: int, hk: int | None = None) -> tuple[torch.Tensor, ...]:
    def make(heads: int) -> torch.Tensor:
        t = torch.empty(b, s, heads, d, device="meta", dtype=torch.bfloat16).transpose(1, 2)
        return t.requires_grad_()

    return make(h), make(hk or h), make(hk or h)


@pytest.mark.parametrize(
    ("backend", "grad_fn", "lse_shape"),
    [
        ("flash", "ScaledDotProductFlashAttentionBackward0", (1, 4, 100)),
        ("efficient", "ScaledDotProductEfficientAttentionBackward0", (1, 4, 128)),
        ("cudnn", "ScaledDotProductCudnnAttentionBackward0", (1, 4, 100, 1)),
    ],
)
def test_patch_runs_the_backend_op_with_its_backward(
    backend: str, grad_fn: str, lse_shape: tuple[int, ...]
) -> None:
    q, k, v = _meta_qkv(1, 4, 100, 64)
    with target("9.0", 91600, backend) as t, DeviceModel("cuda").patched():
        out = F.scaled_dot_product_attention(q, k, v)
    assert t.choices[-1].backend == backend
    fn = out.grad_fn
    assert type(fn).__name__ == grad_fn
    lse = fn._saved_logsumexp if backend != "efficient" else fn._saved_log_sumexp
    assert tuple(lse.shape) == lse_shape and lse.dtype == torch.float32  # efficient: padded to 32
    out.sum().backward()
    assert q.grad is not None and q.grad.shape == q.shape


def test_patch_pads_flash_head_dim_to_8() -> None:
    q, k, v = _meta_qkv(1, 4, 64, 60)
    with target("8.0"), DeviceModel("cuda").patched():
        out = F.scaled_dot_product_attention(q, k, v)
    assert out.shape == (1, 4, 64, 60)
    assert out.grad_fn is not None and "Slice" in type(out.grad_fn).__name__


def test_math_falls_through_to_the_original() -> None:
    q, k, v = _meta_qkv(1, 4, 64, 64)
    with target("8.0", backend="math") as t, DeviceModel("cuda").patched():
        out = F.scaled_dot_product_attention(q, k, v)
    assert t.choices[-1].backend == "math"
    assert "Flash" not in type(out.grad_fn).__name__


# --- saved activations grow linearly (acceptance) ----------------------------------------------------------


class Block(nn.Module):
    def __init__(self, d: int = 512, heads: int = 8, kv_heads: int = 2) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.hd = heads, kv_heads, d // heads
        self.q = nn.Linear(d, d, bias=False)
        self.kv = nn.Linear(d, 2 * kv_heads * self.hd, bias=False)
        self.o = nn.Linear(d, d, bias=False)
        self.n1, self.n2 = nn.RMSNorm(d), nn.RMSNorm(d)
        self.up, self.down = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        y = self.n1(x)
        q = self.q(y).view(b, t, self.heads, self.hd).transpose(1, 2)
        k, v = self.kv(y).view(b, t, 2, self.kv_heads, self.hd).unbind(2)
        a = F.scaled_dot_product_attention(
            q, k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=True
        )
        x = x + self.o(a.transpose(1, 2).reshape(b, t, d))
        return x + self.down(F.silu(self.up(self.n2(x))))


class Llama(nn.Module):
    def __init__(self, layers: int = 2, d: int = 512, vocab: int = 4096) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d) for _ in range(layers))
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        out: torch.Tensor = self.head(x)
        return out


def _saved(preset: str, seq: int, backend: str = "auto") -> tuple[int, str]:
    """The saved-activation peak and the report's SDPA note, simulated for the preset's GPU."""
    r = simulate(
        Llama, [f"1x{seq}:int64"], recipe=Recipe(amp="bf16"), gpu=parse_gpu(preset), sdpa_backend=backend
    )
    (note,) = [n for n in r.notes if n.startswith("SDPA")]
    return r.activation_peak, note


@pytest.mark.parametrize("preset", ["a100-80gb", "h100-80gb"])
def test_saved_activations_grow_linearly(preset: str) -> None:
    cc = PRESETS[preset].compute_capability.replace(".", "")
    small, note = _saved(preset, 1024)
    large, _ = _saved(preset, 4096)
    assert note.startswith(f"SDPA on sm{cc}, cuDNN 9.10.2") and note.endswith(": flash x4")  # 2 layers x 2
    assert large / small <= 4.3


def test_math_backend_would_not_grow_linearly() -> None:
    """The acceptance bound separates the fused kernels from the math decomposition."""
    small, note = _saved("a100-80gb", 1024, "math")
    large, _ = _saved("a100-80gb", 4096, "math")
    assert note.endswith("--sdpa-backend math: math x4")
    assert large / small > 4.3


# --- backward temporaries against the kernels' source ------------------------------------------------------


def test_flash_backward_buffers_follow_mha_bwd() -> None:
    """flash_api.cpp mha_bwd: softmax_d {B, H, round128(Sq)} fp32; dq_accum {B, round128(Sq), H,
    round(d, 32 if d <= 128 else 64)} fp32; dk/dv_expanded {B, Sk, H, d} for GQA."""
    q, k, _ = _meta_qkv(2, 8, 1000, 80, hk=2)
    sizes = flash_backward_sizes(q, k)
    assert sizes["softmax_d"] == 2 * 8 * 1024 * 4
    assert sizes["dq_accum"] == 2 * 1024 * 8 * 96 * 4
    assert sizes["dk_expanded"] == sizes["dv_expanded"] == 2 * 1000 * 8 * 80 * 2
    q, k, _ = _meta_qkv(1, 4, 256, 160)
    assert flash_backward_sizes(q, k)["dq_accum"] == 1 * 256 * 4 * 192 * 4
    assert "dk_expanded" not in flash_backward_sizes(q, k)
    assert flash_backward_sizes(q, k, deterministic=True, sms=108)["dq_accum"] == 27 * 256 * 4 * 192 * 4


def test_flash_backward_rule_orders_copies_outputs_and_buffers() -> None:
    q, k, v = _meta_qkv(1, 4, 128, 64)
    out = torch.empty(1, 128, 4, 64, device="meta", dtype=torch.bfloat16).transpose(1, 2)
    grad = torch.empty(1, 4, 128, 64, device="meta", dtype=torch.bfloat16)  # (B, H, S, D) contiguous: copied
    args = (grad, q, k, v, out, None, None, None, 128, 128, 0.0, False, None, None)
    ws = cuda_attention.flash_backward(args, {}, None)
    assert ws is not None
    kinds = [(s.kind, s.nbytes) for s in ws.steps]
    assert kinds == [
        ("alloc", 128 * 4 * 64 * 2),  # grad_out.contiguous()
        ("output", 0),
        ("alloc", 4 * 128 * 4),  # softmax_d
        ("alloc", 128 * 4 * 64 * 4),  # dq_accum
    ]
    assert DeviceModel("cuda").workspace(
        torch.ops.aten._scaled_dot_product_flash_attention_backward.default, args, {}, None
    )


def test_flash_forward_split_kv_heuristic() -> None:
    """`num_splits_heuristic`: no split once B*H*m_blocks fills 80% of 2*SMs; small decode shapes split."""
    assert flash_forward_splits(1, 32, 32, 1024, 1024, 128, 0.0, 108) == 1
    assert flash_forward_splits(1, 8, 8, 64, 4096, 64, 0.0, 108) > 1
    assert flash_forward_splits(1, 8, 8, 64, 4096, 64, 0.1, 108) == 1  # no split-KV with dropout
    assert num_splits_heuristic(48, 108, 64, 128) == 2  # the comment's example in flash_api.cpp


def test_efficient_backward_buffers() -> None:
    """attention_backward.cu: delta {B, H, M} fp32 for half kernels (kKernelComputesDelta); a workspace
    of grad-Q tiles, ceil(M/BI) * ceil(K/BJ) * (16 + BI*BJ*4) bytes per (batch, head) on sm80
    (kernel_backward.h `workspace_size`)."""
    q, k, v = _meta_qkv(2, 8, 1000, 64)
    tile = efficient_backward_tile("8.0", 64, False)
    assert (tile.block_i, tile.block_j) == (64, 64)
    sizes = efficient_backward_sizes(q, k, v, 0.0, "8.0")
    assert sizes["delta"] == 2 * 8 * 1000 * 4
    per_bh = -(-1000 // 64) * 1 * (16 + 64 * 64 * 4)
    assert sizes["workspace"] == 2 * 8 * ((per_bh // 4 + 3) // 4 * 4) * 4
    q32 = q.detach().float()
    assert set(efficient_backward_sizes(q32, k.float(), v.float(), 0.0, "8.0")) >= {
        "product",
        "row_sum",
        "delta",
    }


def test_presets_have_a_capability_for_every_gpu() -> None:
    for preset in PRESETS.values():
        Gpu(preset.compute_capability)  # parses
        assert dataclasses.replace(Gpu(), compute_capability=preset.compute_capability).major >= 6

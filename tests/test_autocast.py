"""Autocast on meta tensors (tracer/meta/autocast.py) against PyTorch's own autocast on CPU tensors.

Op by op, the emulation on meta runs the same aten ops with the same dtypes as real CPU autocast; whole
training steps under `--amp` match the CPU allocator's peak. The allocator comparisons run with oneDNN off:
its reduced-precision GEMM and convolution kernels book scratchpads (and reduced-precision convolutions
im2col columns) that no workspace rule models yet; those are kernel buffers, not autocast.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from accuracy import compare
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from zoo import ZOO_BY_NAME

from memtrace.tracer.engine.device_model import DeviceModel
from memtrace.tracer.engine.recipes import Recipe
from memtrace.tracer.meta.autocast import (
    AUTOCAST_KEYS,
    POLICIES,
    MetaGradScaler,
    emulated_autocast,
    policy_cast,
    registered_ops,
)

TOLERANCE = 0.01


@pytest.fixture
def no_onednn() -> Iterator[None]:
    before = torch._C._get_mkldnn_enabled()
    torch._C._set_mkldnn_enabled(False)
    try:
        yield
    finally:
        torch._C._set_mkldnn_enabled(before)


@pytest.fixture(autouse=True)
def _autocast_left_as_found() -> Iterator[None]:
    yield
    for device, key in AUTOCAST_KEYS.items():
        assert not torch._C._dispatch_tls_is_dispatch_key_included(key)
        assert not torch.is_autocast_enabled(device)


# --------------------------------------------------------------------------- the policy lists


# Registered elsewhere with a policy of their own: cudnn/AutocastRNN.cpp (builds with cuDNN only).
NOT_LISTED = {"_cudnn_rnn"}


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_policy_lists_are_the_ops_this_torch_registers(device: str) -> None:
    assert set(POLICIES[device]) == registered_ops(device) - NOT_LISTED


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_kernels_are_registered_for_the_policy_ops_this_torch_registers(device: str) -> None:
    from memtrace.tracer.meta.autocast import _registered_policies

    assert _registered_policies(device) == sorted(registered_ops(device) & POLICIES[device].keys())


# --------------------------------------------------------------------------- op by op, meta vs CPU


class _Ops(TorchDispatchMode):
    """Every aten op below autograd on the device's tensors, with its output dtypes; weak references to casts.

    On meta, ops on CPU tensors are left out: the SDPA patch asks the CPU for its backend on stand-ins.
    """

    def __init__(self, device: str = "meta") -> None:
        super().__init__()
        self.device = device
        self.ops: list[tuple[str, tuple[str, ...]]] = []
        self.casts: list[weakref.ref[torch.Tensor]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
        if any(t.device.type == self.device for t in tensors):
            outs = [o for o in tree_leaves(out) if isinstance(o, torch.Tensor)]
            # linear's bias after matmul: in place as the CPU runs it, out of place under this logging mode
            name = "aten.add.Tensor" if str(func) == "aten.add_.Tensor" else str(func)
            self.ops.append((name, tuple(str(o.dtype) for o in outs)))
            if func is torch.ops.aten._to_copy.default:
                self.casts.append(weakref.ref(out))
        return out


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 32)
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.ln = nn.LayerNorm(32)
        self.emb = nn.Embedding(50, 16)
        self.mha = nn.MultiheadAttention(16, 2, batch_first=True)


Snippet = Callable[[_Net, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _disabled_inside(m: _Net, x: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cpu", enabled=False):
        a = m.lin(x)
    return a + m.lin(x)


def _fp16_inside(m: _Net, x: torch.Tensor) -> torch.Tensor:
    # Not the Linear: autocast's weight cache ignores the dtype, so a bf16 region after an fp16 one would get
    # the fp16 weight back (and fail, on meta as on the CPU).
    with torch.autocast("cpu", dtype=torch.float16):
        a = torch.matmul(x, x.transpose(1, 2))
    return a.float().sum(-1, keepdim=True) + m.lin(x)


SNIPPETS: dict[str, Snippet] = {
    "linear": lambda m, x, img, ids: m.lin(x),
    "linear_reused": lambda m, x, img, ids: m.lin(x) + m.lin(x * 2),
    # the last position of one sequence, as generate()'s bias-free head reads it: `matmul` folds it into one
    # `mm` only because the cached weight cast requires grad (under no_grad too: cached_cast casts it with
    # grad enabled), else its strides send it to `bmm`
    "linear_last_position": lambda m, x, img, ids: F.linear(x[:1, -1:, :], m.lin.weight),
    # a strided input with a bias: `linear` asks the contiguity of its cast (a contiguous copy): one `addmm`
    "linear_strided_bias": lambda m, x, img, ids: m.lin(x[:, -1:, :]),
    "conv_bn": lambda m, x, img, ids: m.bn(m.conv(img)),
    "layer_norm": lambda m, x, img, ids: m.ln(m.lin(x)),
    "softmax": lambda m, x, img, ids: F.softmax(m.lin(x), -1) * F.log_softmax(x, -1).sum(),
    "matmul": lambda m, x, img, ids: (x @ x.transpose(1, 2)).sum(-1),
    "bmm_baddbmm": lambda m, x, img, ids: (
        torch.baddbmm(x[:, :, :10], x, x.transpose(1, 2)) + torch.bmm(x, x.transpose(1, 2))
    ),
    "einsum": lambda m, x, img, ids: torch.einsum("bij,bkj->bik", m.lin(x), m.lin(x)),
    "embedding": lambda m, x, img, ids: m.lin(m.emb(ids)),
    "mha": lambda m, x, img, ids: m.mha(x, x, x)[0],
    "mha_sdpa": lambda m, x, img, ids: m.mha(x, x, x, need_weights=False)[0],
    "sdpa": lambda m, x, img, ids: F.scaled_dot_product_attention(m.lin(x), m.lin(x), x.repeat(1, 1, 2)),
    "cross_entropy": lambda m, x, img, ids: F.cross_entropy(m.lin(x).flatten(0, 1), ids.flatten() % 32),
    "mse": lambda m, x, img, ids: F.mse_loss(m.lin(x), x.repeat(1, 1, 2)),
    "cat_stack": lambda m, x, img, ids: (
        torch.cat([m.lin(x), x.repeat(1, 1, 2)], 0).sum(0) + torch.stack([m.lin(x), m.lin(x)]).sum(0)
    ),
    "prod_exp_pow": lambda m, x, img, ids: (
        m.lin(x).prod(-1) + m.lin(x).exp().sum(-1) + (m.lin(x) ** 2).sum(-1)
    ),
    "norm_sum": lambda m, x, img, ids: m.lin(x).norm(dim=-1) + m.lin(x).sum(-1),
    "gelu_dropout": lambda m, x, img, ids: F.dropout(F.gelu(m.lin(x)), 0.1),
    "disabled_inside": lambda m, x, img, ids: _disabled_inside(m, x),
    "fp16_inside": lambda m, x, img, ids: _fp16_inside(m, x),
}


def _ops(snippet: Snippet, device: str) -> list[tuple[str, tuple[str, ...]]]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        with torch.device(device):
            net = _Net()
            x, img = torch.randn(4, 10, 16), torch.randn(2, 3, 12, 12)
            ids = torch.randint(0, 50, (4, 10))
    log = _Ops(device)
    if device == "meta":
        with DeviceModel("cpu").patched(), emulated_autocast("cpu", torch.bfloat16), log:
            _forward_backward(snippet, net, x, img, ids)
    else:
        with torch.autocast("cpu", torch.bfloat16), log:
            _forward_backward(snippet, net, x, img, ids)
    return log.ops


def _forward_backward(snippet: Snippet, net: _Net, *inputs: torch.Tensor) -> None:
    out = snippet(net, *inputs)
    if out.requires_grad:
        out.float().sum().backward()


@pytest.mark.parametrize("name", list(SNIPPETS))
def test_meta_runs_the_ops_cpu_autocast_runs(name: str) -> None:
    assert _ops(SNIPPETS[name], "meta") == _ops(SNIPPETS[name], "cpu")


def _no_grad(snippet: Snippet) -> Snippet:
    def run(m: _Net, x: torch.Tensor, img: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return snippet(m, x, img, ids)

    return run


@pytest.mark.parametrize("name", ["linear_last_position", "linear_strided_bias", "linear_reused"])
def test_meta_runs_the_ops_cpu_autocast_runs_under_no_grad(name: str) -> None:
    """Under no_grad (generate() runs there) the weight-cast cache still casts with grad enabled (PyTorch's
    `cached_cast`, where this PyTorch does): the meta run takes the same `mm`/`bmm` paths as the CPU."""
    assert _ops(_no_grad(SNIPPETS[name]), "meta") == _ops(_no_grad(SNIPPETS[name]), "cpu")


# --------------------------------------------------------------------------- semantics


def test_casts_are_what_autograd_saves() -> None:
    lin = nn.Linear(8, 4, device="meta")
    saved: list[torch.dtype] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.dtype)
        return t

    with (
        emulated_autocast("cpu", torch.bfloat16),
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
    ):
        y = lin(torch.empty(2, 8, device="meta"))
    assert y.dtype == torch.bfloat16
    assert saved and set(saved) == {torch.bfloat16}
    assert y.grad_fn is not None
    kinds = {type(n).__name__ for n, _ in y.grad_fn.next_functions if n is not None}
    assert "ToCopyBackward0" in kinds


def _weight_casts(log: _Ops) -> int:
    return sum(1 for op, dtypes in log.ops if op == "aten._to_copy.default" and dtypes == ("torch.bfloat16",))


def test_weight_cast_is_cached_until_the_outermost_region_exits() -> None:
    lin = nn.Linear(8, 4, bias=False, device="meta")
    x = torch.empty(2, 8, device="meta", dtype=torch.bfloat16)
    log = _Ops()
    with emulated_autocast("cpu", torch.bfloat16):
        with log:
            lin(x)
            lin(x)
        assert _weight_casts(log) == 1  # one cast of the weight, reused
        with torch.autocast("cpu", torch.bfloat16):
            pass
        gc.collect()
        assert log.casts[0]() is not None  # an inner region's exit keeps the cache
    gc.collect()
    assert log.casts[0]() is None  # the outermost exit drops it
    log = _Ops()
    with emulated_autocast("cpu", torch.bfloat16), log:
        lin(x)
    assert _weight_casts(log) == 1  # the outermost exit dropped it: cast again


def test_cache_off_casts_every_time() -> None:
    lin = nn.Linear(8, 4, bias=False, device="meta")
    x = torch.empty(2, 8, device="meta", dtype=torch.bfloat16)
    log = _Ops()
    with emulated_autocast("cpu", torch.bfloat16, cache_enabled=False), log:
        lin(x)
        lin(x)
    assert _weight_casts(log) == 2


def test_user_code_sees_autocast_state() -> None:
    with emulated_autocast("cuda", torch.float16):
        assert torch.is_autocast_enabled("cuda")
        assert torch.get_autocast_dtype("cuda") == torch.float16
        with torch.autocast("cuda", enabled=False):
            assert not torch.is_autocast_enabled("cuda")
            assert torch.mm(*(torch.empty(4, 4, device="meta"),) * 2).dtype == torch.float32
        with torch.autocast("cuda", dtype=torch.bfloat16):
            assert torch.mm(*(torch.empty(4, 4, device="meta"),) * 2).dtype == torch.bfloat16
    assert not torch.is_autocast_enabled("cuda")


def test_cuda_policies_on_meta() -> None:
    x = torch.empty(4, 8, device="meta")
    w = torch.empty(3, 8, device="meta", requires_grad=True)
    h = torch.empty(4, 8, device="meta", dtype=torch.float16)
    with emulated_autocast("cuda", torch.float16):
        assert F.linear(x, w).dtype == torch.float16  # lower_precision_fp
        assert torch.exp(h).dtype == torch.float32  # fp32
        assert F.layer_norm(h, (8,)).dtype == torch.float32
        assert F.softmax(h, -1).dtype == torch.float32  # fp32_set_opt_dtype
        assert h.sum().dtype == torch.float32
        assert F.softmax(h, -1, dtype=torch.float16).dtype == torch.float16  # an explicit dtype is kept
        assert torch.ops.aten.norm.Scalar(h).dtype == torch.float32  # fp32_append_dtype
        assert torch.addcmul(h, x, h).dtype == torch.float32  # promote
        assert torch.cat([h, h]).dtype == torch.float16  # no CUDA policy for cat
        logits = F.linear(x, w)
        assert F.cross_entropy(logits, torch.zeros(4, dtype=torch.long, device="meta")).dtype == torch.float32
        with pytest.raises(RuntimeError, match="unsafe to autocast"):
            F.binary_cross_entropy(torch.sigmoid(logits), torch.empty_like(logits))
    with emulated_autocast("cpu", torch.bfloat16):
        assert torch.exp(h).dtype == torch.float16  # CPU: no fp32 policy for exp
        assert torch.cat([h.bfloat16(), x]).dtype == torch.float32  # CPU: promote


def test_only_meta_and_only_inside() -> None:
    cpu = torch.randn(4, 8), torch.randn(3, 8)
    meta = torch.empty(4, 8, device="meta"), torch.empty(3, 8, device="meta")
    with emulated_autocast("cuda", torch.float16):
        assert F.linear(*cpu).dtype == torch.float32  # cpu tensors are not cuda autocast's business
    with torch.autocast("cpu", torch.bfloat16):
        assert F.linear(*meta).dtype == torch.float32  # real autocast leaves meta alone
        assert F.linear(*cpu).dtype == torch.bfloat16  # and PyTorch's own kernel is back
    assert policy_cast("cpu", "linear", *meta) == meta  # autocast off: nothing to do


# --------------------------------------------------------------------------- whole steps, allocator peaks

MODELS = ["mlp", "seed_cnn", "transformer_sdpa", "transformer_mha", "resnet_block"]
OPTIMIZERS = ["adam", "sgd:momentum=0.9"]


def _param(name: str, optimizer: str, amp: str) -> Any:
    return pytest.param(name, optimizer, amp, id=f"{name}-{optimizer.split(':')[0]}-{amp}")


CASES = [_param(n, o, "bf16") for n in MODELS for o in OPTIMIZERS]
CASES += [_param(n, "adam", "fp16") for n in ("mlp", "transformer_sdpa")]


@pytest.mark.usefixtures("no_onednn")
@pytest.mark.parametrize("name,optimizer,amp", CASES)
def test_amp_step_matches_the_allocator(name: str, optimizer: str, amp: str) -> None:
    cmp = compare(ZOO_BY_NAME[name], "train", optimizer, Recipe(amp=amp))
    assert abs(cmp.error) <= TOLERANCE, (
        f"predicted {cmp.predicted:,} vs measured {cmp.measured:,} ({100 * cmp.error:+.3f}%)"
    )


@pytest.mark.usefixtures("no_onednn")
@pytest.mark.parametrize("name", ["mlp", "transformer_sdpa"])
def test_amp_inference_matches_the_allocator(name: str) -> None:
    cmp = compare(ZOO_BY_NAME[name], "infer", "adam", Recipe(amp="bf16"))
    assert abs(cmp.error) <= TOLERANCE, f"{100 * cmp.error:+.3f}%"


@pytest.mark.usefixtures("no_onednn")
@pytest.mark.parametrize("name", ["mlp", "transformer_mha"])
def test_grad_scaler_step_matches_the_allocator(name: str) -> None:
    """fp16 training scales the loss: the simulation's MetaGradScaler against the reference's GradScaler
    (init_scale 1 there: no overflow, so the real run takes its optimizer steps too)."""
    cmp = compare(ZOO_BY_NAME[name], "train", "adam", Recipe(amp="fp16"))
    assert cmp.result.recipe == "amp fp16"
    assert abs(cmp.predicted - cmp.measured) <= 12  # Adam's wrapped Python scalars, as in fp32


def test_meta_grad_scaler_for_cuda() -> None:
    lin = nn.Linear(8, 4, device="meta")
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    scaler = MetaGradScaler("cuda")
    assert scaler.is_enabled()
    with emulated_autocast("cuda", torch.float16):
        loss = lin(torch.empty(2, 8, device="meta")).float().sum()
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    assert scaler._scale is not None and scaler._scale.device.type == "meta"


def test_the_cache_probe_answers_the_same_inside_a_traced_inference_step() -> None:
    """The probe runs once, wherever the first simulation asks it: an inference-mode step traced on meta
    under a dispatch mode among them."""
    from memtrace.tracer.meta.autocast import _cache_probe

    _cache_probe.cache_clear()
    outside = _cache_probe()
    _cache_probe.cache_clear()
    try:
        with (
            torch.device("meta"),
            torch.inference_mode(),
            torch.autocast("cpu", torch.bfloat16, cache_enabled=False),
            _Ops(),
        ):
            assert _cache_probe() == outside
    finally:
        _cache_probe.cache_clear()

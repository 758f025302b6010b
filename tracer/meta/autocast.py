"""Mixed precision on meta tensors: `torch.autocast` as PyTorch runs it on the target device.

Real autocast does nothing to meta tensors: its dispatch keys (AutocastCPU, AutocastCUDA) are in the key set
of cpu and cuda tensors only, and its kernels cast only tensors on their own device. Here the key is added to
every dispatch through the thread-local include set, and the ops autocast registers for that key get Python
kernels that apply the same cast policy to meta tensors. Everything else stays PyTorch's own: the enabled
flag, the dtype, nesting and `torch.autocast(enabled=False)` regions are the real thread-local state, so user
code that asks `torch.is_autocast_enabled()` sees the truth; the kernels sit where autocast sits, above
autograd, so a cast is an autograd-recorded `_to_copy` and the copy is what the op saves for backward;
composite ops without a policy of their own decompose as on the device and their inner ops meet the policy
as there.

The weight-cast cache is reproduced: lower-precision casts of float32 leaves that require grad (parameters)
are kept for the whole autocast region and dropped when the outermost `torch.autocast` exits.

Policy lists: aten/src/ATen/autocast_mode.cpp (the AutocastCPU list) and aten/src/ATen/autocast_mode.h
(AT_FORALL_LOWER_PRECISION_FP, AT_FORALL_FP32, AT_FORALL_FP32_SET_OPT_DTYPE,
AT_FORALL_DIFFERENT_REDISPATCH_SIGNATURE, AT_FORALL_PROMOTE, used for AutocastCUDA) of PyTorch 2.13.
Named-tensor (Dimname) overloads, which this PyTorch does not register, are left out. Only ops the running
PyTorch registers a kernel for under the device's autocast key get one here, so the emulation follows the
installed version; tests/test_autocast.py checks that the lists are exactly the registered ops.
"""

from __future__ import annotations

import enum
import functools
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from typing import Any

import torch
from torch._C import DispatchKey, DispatchKeySet
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

from ..core.registry import patch


class CastPolicy(enum.Enum):
    """autocast_mode.h's CastPolicy, plus the CUDA ban on binary_cross_entropy."""

    LOWER = "lower_precision_fp"  # cast floating args to the autocast dtype
    FP32 = "fp32"  # cast floating args to float32
    FP32_SET_OPT_DTYPE = "fp32_set_opt_dtype"  # set the op's `dtype=None` to float32
    FP32_APPEND_DTYPE = "fp32_append_dtype"  # call the overload that takes a dtype, with float32
    PROMOTE = "promote"  # cast floating args to the widest floating dtype among them
    BANNED = "banned"


def _policy(policy: CastPolicy, names: str) -> dict[str, CastPolicy]:
    return dict.fromkeys(names.split(), policy)


CPU_POLICIES: dict[str, CastPolicy] = {
    **_policy(
        CastPolicy.LOWER,
        """conv1d conv1d.padding conv2d conv2d.padding conv3d conv3d.padding bmm mm linalg_vecdot
        baddbmm addmm _addmm_activation addbmm linear _convolution.deprecated matmul conv_tbc
        mkldnn_rnn_layer conv_transpose1d conv_transpose2d.input conv_transpose3d.input prelu
        scaled_dot_product_attention _native_multi_head_attention""",
    ),
    **_policy(
        CastPolicy.FP32,
        """avg_pool3d binary_cross_entropy grid_sampler polar prod prod.dim_int quantile
        quantile.scalar nanquantile nanquantile.scalar stft stft.center cdist grid_sampler_2d
        _grid_sampler_2d_cpu_fallback grid_sampler_3d trace view_as_complex cholesky
        cholesky_inverse cholesky_solve inverse lu_solve orgqr ormqr pinverse max_pool3d
        max_unpool2d max_unpool3d adaptive_avg_pool3d reflection_pad1d reflection_pad2d
        replication_pad1d replication_pad2d replication_pad3d mse_loss cosine_embedding_loss
        nll_loss nll_loss2d hinge_embedding_loss poisson_nll_loss smooth_l1_loss cross_entropy_loss
        l1_loss huber_loss margin_ranking_loss soft_margin_loss triplet_margin_loss
        multi_margin_loss ctc_loss.IntList ctc_loss.Tensor kl_div multilabel_margin_loss
        binary_cross_entropy_with_logits fft_fft fft_ifft fft_fft2 fft_ifft2 fft_fftn fft_ifftn
        fft_rfft fft_irfft fft_rfft2 fft_irfft2 fft_rfftn fft_irfftn fft_hfft fft_ihfft linalg_cond
        linalg_cond.p_str linalg_matrix_rank linalg_matrix_rank.tol_tensor
        linalg_matrix_rank.atol_rtol_tensor linalg_matrix_rank.atol_rtol_float linalg_solve
        linalg_cholesky linalg_svdvals linalg_eigvals linalg_eigvalsh linalg_inv
        linalg_householder_product linalg_tensorinv linalg_tensorsolve
        fake_quantize_per_tensor_affine geqrf _lu_with_info qr svd triangular_solve
        fractional_max_pool2d fractional_max_pool3d adaptive_max_pool3d
        multilabel_margin_loss_forward linalg_qr linalg_cholesky_ex linalg_svd linalg_eig
        linalg_eigh linalg_lstsq linalg_inv_ex""",
    ),
    **_policy(CastPolicy.PROMOTE, "stack cat index_copy"),
}

CUDA_POLICIES: dict[str, CastPolicy] = {
    **_policy(
        CastPolicy.LOWER,
        """_convolution.deprecated _convolution conv1d conv2d conv3d conv_tbc conv_transpose1d
        conv_transpose2d.input conv_transpose3d.input convolution prelu addmm addmv addr matmul
        einsum mm mv linalg_vecdot linear addbmm baddbmm bmm chain_matmul linalg_multi_dot
        _thnn_fused_lstm_cell _thnn_fused_gru_cell lstm_cell gru_cell rnn_tanh_cell rnn_relu_cell
        _scaled_dot_product_flash_attention scaled_dot_product_attention cudnn_convolution
        cudnn_convolution_transpose""",
    ),
    **_policy(
        CastPolicy.FP32,
        """acos asin cosh erfinv exp expm1 log log10 log2 log1p reciprocal rsqrt sinh tan
        pow.Tensor_Scalar pow.Tensor_Tensor pow.Scalar softplus layer_norm native_layer_norm
        rms_norm group_norm frobenius_norm.dim nuclear_norm nuclear_norm.dim cosine_similarity
        poisson_nll_loss cosine_embedding_loss nll_loss nll_loss2d hinge_embedding_loss kl_div
        l1_loss smooth_l1_loss huber_loss mse_loss margin_ranking_loss multilabel_margin_loss
        soft_margin_loss triplet_margin_loss multi_margin_loss binary_cross_entropy_with_logits dist
        pdist cdist renorm logsumexp upsample_nearest1d _upsample_nearest_exact1d upsample_nearest2d
        _upsample_nearest_exact2d upsample_nearest3d _upsample_nearest_exact3d upsample_linear1d
        upsample_bilinear2d _upsample_bilinear2d_aa upsample_trilinear3d upsample_bicubic2d
        _upsample_bicubic2d_aa""",
    ),
    **_policy(
        CastPolicy.FP32_SET_OPT_DTYPE,
        """prod prod.dim_int softmax.int log_softmax.int cumprod cumsum linalg_vector_norm
        linalg_matrix_norm linalg_matrix_norm.str_ord sum sum.dim_IntList""",
    ),
    **_policy(CastPolicy.FP32_APPEND_DTYPE, "norm.Scalar norm.ScalarOpt_dim"),
    **_policy(
        CastPolicy.PROMOTE,
        "addcdiv addcmul atan2 bilinear cross dot vdot grid_sampler index_put tensordot scatter_add",
    ),
    **_policy(CastPolicy.BANNED, "binary_cross_entropy"),
}

POLICIES: dict[str, dict[str, CastPolicy]] = {"cpu": CPU_POLICIES, "cuda": CUDA_POLICIES}
AUTOCAST_KEYS: dict[str, DispatchKey] = {"cpu": DispatchKey.AutocastCPU, "cuda": DispatchKey.AutocastCUDA}

# fp32_append_dtype: the overload each registered one redispatches to, with `dtype` appended.
_APPEND_DTYPE_TARGET = {
    "norm.Scalar": "norm.ScalarOpt_dtype",
    "norm.ScalarOpt_dim": "norm.ScalarOpt_dim_dtype",
}

_BANNED_MESSAGE = (
    "torch.nn.functional.binary_cross_entropy and torch.nn.BCELoss are unsafe to autocast.\n"
    "Many models use a sigmoid layer right before the binary cross entropy layer.\n"
    "In this case, combine the two layers using torch.nn.functional.binary_cross_entropy_with_logits\n"
    "or torch.nn.BCEWithLogitsLoss.  binary_cross_entropy_with_logits and BCEWithLogits are\n"
    "safe to autocast."
)


def _all_autocast_keys() -> DispatchKeySet:
    keys = DispatchKeySet(DispatchKey.AutocastCPU)
    for name in (
        "AutocastCUDA",
        "AutocastXPU",
        "AutocastMPS",
        "AutocastHPU",
        "AutocastIPU",
        "AutocastPrivateUse1",
    ):
        if hasattr(DispatchKey, name):
            keys = keys.add(getattr(DispatchKey, name))
    return keys


_NO_AUTOCAST = _all_autocast_keys()  # what the C++ wrappers exclude: DispatchKey::AutocastFunctionality


# --- the cast ------------------------------------------------------------------------------------------


def eligible(t: Any, device_type: str) -> bool:
    """autocast_mode.h's is_eligible: a floating, non-double tensor on the device (here: or on meta)."""
    return (
        isinstance(t, torch.Tensor)
        and t.is_floating_point()
        and t.dtype != torch.float64
        and (t.device.type in ("meta", device_type) or isinstance(t, FakeTensor))  # fake: --ddp/--fsdp
    )


# The weight-cast cache: id(source) -> (weak reference to the source, its cast). Cleared with autocast's own.
_CACHE: dict[int, tuple[weakref.ref[torch.Tensor], torch.Tensor]] = {}


@functools.cache
def _cache_probe() -> tuple[bool, bool]:
    """This PyTorch's weight-cast cache, probed once on real CPU tensors before the emulated kernels are in
    place, whatever device context, dispatch modes and grad mode the caller is in (an inference-mode step
    traced on meta): whether a weight used twice under `torch.inference_mode()` is cast once, and whether
    the cached cast under `torch.no_grad()` runs with grad enabled."""
    casts: list[bool] = []  # grad mode at each cast of the weight

    class Count(TorchDispatchMode):
        def __init__(self, weight: torch.Tensor) -> None:
            super().__init__()
            self.weight = weight

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            if func in (torch.ops.aten._to_copy.default, torch.ops.aten.to.dtype) and args[0] is self.weight:
                casts.append(torch.is_grad_enabled())
            return func(*args, **(kwargs or {}))

    def mm_under(grad_off: AbstractContextManager[Any], weight: torch.Tensor) -> None:
        with grad_off, torch.autocast("cpu", torch.bfloat16, cache_enabled=True), Count(weight):
            torch.mm(weight, weight)

    with _disable_current_modes(), torch.inference_mode(False):
        weight = torch.nn.Parameter(torch.ones(2, 2, device="cpu"))
        mm_under(torch.inference_mode(), weight)
        cached = len(casts) == 1
        casts.clear()
        mm_under(torch.no_grad(), weight)
    return cached, casts == [True]


def caches_under_inference_mode() -> bool:
    """Whether this PyTorch's autocast caches weight casts under `torch.inference_mode()`.

    pytorch#158232 made `cached_cast` skip the cache there (`!InferenceMode::is_enabled()`); older versions
    cache. Probed once on real CPU tensors: a weight used twice is cast once when it is cached.
    """
    return _cache_probe()[0]


def cached_cast_enables_grad() -> bool:
    """Whether this PyTorch's `cached_cast` casts a weight it caches with grad enabled (`c10::AutoGradMode
    enable_grad(true)`, the same fix as pytorch#158232's), so that under `torch.no_grad()` the cached cast
    still requires grad and has a grad_fn. The cast's `requires_grad` is no bookkeeping detail: `matmul`
    folds a 3-d input into one `mm` whenever the other operand requires grad (LinearAlgebra.cpp's
    `should_fold`), and takes the `bmm` path otherwise when the input's strides do not fold, as for the
    last position of a sequence `hidden[:, -1:, :]` that a generation's head reads."""
    return _cache_probe()[1]


def _cacheable(to: torch.dtype, t: torch.Tensor, device_type: str) -> bool:
    return (
        (not torch.is_inference_mode_enabled() or caches_under_inference_mode())
        and to == torch.get_autocast_dtype(device_type)
        and t.dtype == torch.float32
        and t.requires_grad
        and t.is_leaf
        and not t._is_view()
        and torch.is_autocast_cache_enabled()
    )


def cached_cast(to: torch.dtype, t: Any, device_type: str) -> Any:
    """autocast_mode.cpp's cached_cast for one argument: tensors, lists of tensors, anything else as is."""
    if isinstance(t, (list, tuple)) and any(isinstance(x, torch.Tensor) for x in t):
        return type(t)(cached_cast(to, x, device_type) for x in t)
    if not eligible(t, device_type) or t.dtype == to:
        return t
    if not _cacheable(to, t, device_type):
        return t.to(to)
    hit = _CACHE.get(id(t))
    if hit is not None and hit[0]() is t:
        return hit[1]
    with torch.enable_grad() if cached_cast_enables_grad() else nullcontext():
        out = t.to(to)
    _CACHE[id(t)] = (weakref.ref(t), out)
    return out


def _cast_all(
    to: torch.dtype, args: Sequence[Any], kwargs: dict[str, Any], device_type: str
) -> tuple[list[Any], dict[str, Any]]:
    """Cast every argument, last first: GCC evaluates the C++ wrapper's argument pack right to left."""
    new_kwargs = {k: cached_cast(to, kwargs[k], device_type) for k in reversed(list(kwargs))}
    new_args = [cached_cast(to, a, device_type) for a in reversed(args)][::-1]
    return new_args, {k: new_kwargs[k] for k in kwargs}


def _tensors(values: Sequence[Any]) -> Iterator[torch.Tensor]:
    for v in values:
        if isinstance(v, torch.Tensor):
            yield v
        elif isinstance(v, (list, tuple)):
            yield from _tensors(v)


def promote_type(lower: torch.dtype, values: Sequence[Any], device_type: str) -> torch.dtype:
    """autocast_mode.h's promote_type: float32 wins over the lower dtype, doubles are ignored."""
    current = lower
    for t in _tensors(values):
        if not eligible(t, device_type):
            continue
        if current == torch.float32 or t.dtype == torch.float32:
            current = torch.float32
        elif current != lower or t.dtype != lower:
            raise RuntimeError("Unexpected floating ScalarType in at::autocast::prioritize")
    return current


# --- the policies --------------------------------------------------------------------------------------

Runner = Callable[[Any, str, tuple[Any, ...], dict[str, Any]], Any]


def _run_cast(
    to: torch.dtype, op: Any, device_type: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    new_args, new_kwargs = _cast_all(to, args, kwargs, device_type)
    return op(*new_args, **new_kwargs)


def _lower(op: Any, device_type: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return _run_cast(torch.get_autocast_dtype(device_type), op, device_type, args, kwargs)


def _fp32(op: Any, device_type: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return _run_cast(torch.float32, op, device_type, args, kwargs)


def _promote(op: Any, device_type: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    to = promote_type(torch.get_autocast_dtype(device_type), [*args, *kwargs.values()], device_type)
    return _run_cast(to, op, device_type, args, kwargs)


def _set_opt_dtype(op: Any, device_type: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if not eligible(args[0], device_type):
        return op(*args, **kwargs)
    names = [a.name for a in op._schema.arguments]
    at = names.index("dtype")
    if at < len(args):
        if args[at] is None:
            args = (*args[:at], torch.float32, *args[at + 1 :])
    elif kwargs.get("dtype") is None:
        kwargs = {**kwargs, "dtype": torch.float32}
    return op(*args, **kwargs)


def _append_dtype(op: Any, device_type: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    name, overload = _APPEND_DTYPE_TARGET[_op_name(op)].split(".")
    target = getattr(getattr(torch.ops.aten, name), overload)
    full = [*args, *(a.default_value for a in op._schema.arguments[len(args) :])]
    first = args[0]
    return target(*full, dtype=torch.float32 if eligible(first, device_type) else first.dtype)


def _banned(op: Any, device_type: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    raise RuntimeError(_BANNED_MESSAGE)


_RUNNERS: dict[CastPolicy, Runner] = {
    CastPolicy.LOWER: _lower,
    CastPolicy.FP32: _fp32,
    CastPolicy.FP32_SET_OPT_DTYPE: _set_opt_dtype,
    CastPolicy.FP32_APPEND_DTYPE: _append_dtype,
    CastPolicy.PROMOTE: _promote,
    CastPolicy.BANNED: _banned,
}


def _op_name(op: Any) -> str:
    overload = op._overloadname
    return str(op._opname) if overload == "default" else f"{op._opname}.{overload}"


def policy_cast(device_type: str, op: str, *args: Any) -> tuple[Any, ...]:
    """The arguments as `op`'s autocast kernel would pass them on, when autocast is on for meta tensors.

    For code that calls a device kernel directly instead of through the dispatcher (a device patch that
    replaces a composite op), so that the cast still happens where autocast would do it. Casting or promoting
    policies only; others, and a disabled autocast, return the arguments as they are.
    """
    policy = POLICIES[device_type].get(op)
    if policy is None or not _active(device_type):
        return args
    if policy is CastPolicy.LOWER:
        to = torch.get_autocast_dtype(device_type)
    elif policy is CastPolicy.FP32:
        to = torch.float32
    elif policy is CastPolicy.PROMOTE:
        to = promote_type(torch.get_autocast_dtype(device_type), args, device_type)
    else:
        return args
    with torch._C._ExcludeDispatchKeyGuard(_NO_AUTOCAST):
        return tuple(_cast_all(to, args, {}, device_type)[0])


def _active(device_type: str) -> bool:
    key = AUTOCAST_KEYS[device_type]
    return torch.is_autocast_enabled(device_type) and torch._C._dispatch_tls_is_dispatch_key_included(key)


# --- installing the kernels ----------------------------------------------------------------------------


def _kernel(op: Any, policy: CastPolicy, device_type: str) -> Callable[..., Any]:
    run = _RUNNERS[policy]

    def kernel(*args: Any, **kwargs: Any) -> Any:
        with torch._C._ExcludeDispatchKeyGuard(_NO_AUTOCAST):
            return run(op, device_type, args, kwargs)

    return kernel


def registered_ops(device_type: str) -> set[str]:
    """The aten ops the running PyTorch registers an autocast kernel for on this device ("name.overload")."""
    key = str(AUTOCAST_KEYS[device_type]).split(".")[-1]
    return {
        name.removeprefix("aten::")
        for name in torch._C._dispatch_get_all_op_names()
        if name.startswith("aten::") and torch._C._dispatch_has_kernel_for_dispatch_key(name, key)
    }


def _registered_policies(device_type: str) -> list[str]:
    """The ops of the device's policy that the running PyTorch registers an autocast kernel for, sorted:
    `registered_ops(device_type) & POLICIES[device_type]`, asking of the policy's ops only."""
    key = str(AUTOCAST_KEYS[device_type]).split(".")[-1]
    names = set(torch._C._dispatch_get_all_op_names())
    return sorted(
        name
        for name in POLICIES[device_type]
        if f"aten::{name}" in names and torch._C._dispatch_has_kernel_for_dispatch_key(f"aten::{name}", key)
    )


def _overload(name: str) -> Any:
    base, _, overload = name.partition(".")
    return getattr(getattr(torch.ops.aten, base), overload or "default")


@contextmanager
def _kernels(device_type: str) -> Iterator[None]:
    """Python kernels for the device's autocast key, replacing PyTorch's own until exit."""
    key = str(AUTOCAST_KEYS[device_type]).split(".")[-1]
    lib = torch.library.Library("aten", "IMPL")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Overriding a previously registered kernel"
            for name in _registered_policies(device_type):
                op = _overload(name)
                lib.impl(name, _kernel(op, POLICIES[device_type][name], device_type), key)
        yield
    finally:
        lib._destroy()


@contextmanager
def _included(device_type: str) -> Iterator[None]:
    """The autocast key in every dispatch, meta tensors' included; it acts only while autocast is enabled."""
    key = AUTOCAST_KEYS[device_type]
    before = torch._C._dispatch_tls_is_dispatch_key_included(key)
    torch._C._dispatch_tls_set_dispatch_key_included(key, True)
    try:
        yield
    finally:
        torch._C._dispatch_tls_set_dispatch_key_included(key, before)


@contextmanager
def _cache_cleared_with_autocast() -> Iterator[None]:
    """`torch.autocast.__exit__` clears the cache at the outermost exit through torch.clear_autocast_cache."""
    original = torch.clear_autocast_cache

    def clear() -> None:
        original()
        _CACHE.clear()

    torch.clear_autocast_cache = clear
    try:
        yield
    finally:
        torch.clear_autocast_cache = original
        _CACHE.clear()


@contextmanager
def cuda_amp_allowed() -> Iterator[None]:
    """torch.autocast("cuda") disables itself where CUDA is absent; the simulated device has it."""
    common = torch.cuda.amp.common
    saved = (common.amp_definitely_not_available, torch.cuda.is_bf16_supported)
    common.amp_definitely_not_available = lambda: False
    torch.cuda.is_bf16_supported = lambda including_emulation=True: True
    try:
        yield
    finally:
        common.amp_definitely_not_available, torch.cuda.is_bf16_supported = saved


_DEPTH: dict[str, int] = {}


@contextmanager
def meta_autocast(device_type: str) -> Iterator[None]:
    """While active, `torch.autocast(device_type)` regions act on meta tensors as on the device.

    Re-entrant. Registered as a device patch, so that a model's own autocast regions work in every simulation.
    """
    if device_type not in POLICIES:
        raise ValueError(f"no autocast emulation for device {device_type!r} (cpu or cuda)")
    if _DEPTH.get(device_type, 0) > 0:
        _DEPTH[device_type] += 1
        try:
            yield
        finally:
            _DEPTH[device_type] -= 1
        return
    caches_under_inference_mode()  # probed on real tensors before the emulated kernels are in place
    with ExitStack() as stack:
        stack.enter_context(_kernels(device_type))
        stack.enter_context(_included(device_type))
        stack.enter_context(_cache_cleared_with_autocast())
        if device_type == "cuda":
            stack.enter_context(cuda_amp_allowed())
        _DEPTH[device_type] = 1
        stack.callback(_DEPTH.pop, device_type)
        yield


@contextmanager
def emulated_autocast(
    device_type: str,
    dtype: torch.dtype | None = None,
    enabled: bool = True,
    cache_enabled: bool | None = None,
) -> Iterator[None]:
    """`torch.autocast(device_type, dtype)` for a step simulated on meta tensors, as the device runs it."""
    with meta_autocast(device_type), torch.autocast(device_type, dtype, enabled, cache_enabled):
        yield


@patch("cpu", "autocast")
def _cpu_patch() -> AbstractContextManager[None]:
    return meta_autocast("cpu")


@patch("cuda", "autocast")
def _cuda_patch() -> AbstractContextManager[None]:
    return meta_autocast("cuda")


@patch("cuda", "checkpoint_device")
@contextmanager
def _checkpoint_sees_cuda() -> Iterator[None]:
    """`torch.utils.checkpoint` saves the autocast state of its inputs' device and restores it around the
    recompute; for meta tensors that device is "meta", so a CUDA autocast region would be lost in the
    recompute (bf16 activations meeting fp32 weights). While simulating cuda, meta tensors stand for cuda."""
    import torch.utils.checkpoint as ckpt

    original = ckpt._infer_device_type

    def infer_device_type(*args: Any) -> str:
        found: str = original(*args)
        return "cuda" if found == "meta" else found

    ckpt._infer_device_type = infer_device_type
    try:
        yield
    finally:
        ckpt._infer_device_type = original


class MetaGradScaler(torch.amp.GradScaler):
    """`torch.amp.GradScaler` for a step simulated on meta tensors: the same tensors and the same ops.

    Only the decision to skip the optimizer step after an inf or NaN gradient, which the real scaler reads
    with `.item()` (impossible on meta), is replaced: the step is always taken, as in the steady state.
    """

    def __init__(self, device: str = "cuda", **kwargs: Any) -> None:
        with cuda_amp_allowed():
            super().__init__(device, **kwargs)

    def _maybe_opt_step(
        self, optimizer: torch.optim.Optimizer, optimizer_state: dict[str, Any], *args: Any, **kwargs: Any
    ) -> float | None:
        out: float | None = optimizer.step(*args, **kwargs)
        return out

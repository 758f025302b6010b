"""Hugging Face's `generate()` under memtrace: the loop runs exactly its bound, by one documented rule.

The rule: while memtrace runs a step (simulated, and in `verify`'s real run alike, so both sides allocate the
same), the stopping criteria that read the generated tokens (`EosTokenCriteria`, `StopStringCriteria`) run
as they are, so their small outputs are recorded, and their value is then *known* to be all False: on meta
through the resolver's known values, on real tensors by zeroing the output in place (no allocation). HF's
own `MaxLengthCriteria` is a constant fill, known, so `unfinished & ~criteria`, `.max() == 0` and `bool()`
are computed on known values and the loop ends exactly at `max_length` (prompt + `max_new_tokens`). EOS
cannot end generation early on meta: the figure is an upper bound for N new tokens.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import nn

from ..core.errors import MemtraceError
from ..core.generation import UPPER_BOUND, GenerateSpec
from ..core.records import Category, Phase
from .data_dependent import active_resolver
from .decode_replay import DecodeReplay
from .libraries import library_module
from .recorder import Recorder

_READS_TOKENS = ("EosTokenCriteria", "StopStringCriteria")


@contextmanager
def known_stops() -> Iterator[None]:
    """The token-reading stopping criteria of `transformers` answer "not done", as the rule above says."""
    module = library_module("transformers.generation.stopping_criteria")
    if module is None:
        yield
        return
    with ExitStack() as stack:
        for name in _READS_TOKENS:
            cls = getattr(module, name, None)
            if cls is not None:
                original = cls.__call__
                cls.__call__ = _not_done(original)
                stack.callback(setattr, cls, "__call__", original)
        yield


def _not_done(original: Any) -> Any:
    @functools.wraps(original)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = original(self, *args, **kwargs)
        if isinstance(out, torch.Tensor):
            settle_false(out)
        return out

    return call


def settle_false(out: torch.Tensor) -> None:
    """The criterion's output is all False: a known value on meta, zeros in place on a real tensor."""
    if out.device.type == "meta":
        resolver = active_resolver()
        if resolver is not None:
            resolver.values.put(out, torch.zeros(out.shape, dtype=out.dtype))
        return
    with torch.no_grad():
        out.zero_()


class GenerationWatch:
    """Tells the recorder which of the model's forwards are generation's, and which storages the KV cache
    keeps.

    Phases: a forward of the whole model under no_grad (or inference mode) that receives a KV cache (a
    `cache`/`past_key_values` argument, or a model holding a static cache as the rule below finds it) is a
    generation forward: the first in a step is `prefill`, the later ones `decode` steps, numbered from 1
    (the token index). Everything else keeps its phase.

    The KV cache (`kv_cache`), marked after each generation forward: every tensor a Hugging Face cache
    layer holds (`DynamicCache`/`StaticCache` layers' keys and values, a quantized layer's packed data and
    scales, an offloaded layer's copies), filed under the attention module of the same layer (the module
    whose `layer_idx` is the cache layer's index, else the i-th module named `*attn*`/`*attention`); and a
    user's static cache: the buffers and tensor attributes of a module whose class name ends in `KVCache`
    (gpt-fast's `k_cache`/`v_cache`), and `cache_k`/`cache_v` tensors of any module (Meta's Llama code),
    filed under that module.
    """

    def __init__(self, rec: Recorder, model: nn.Module) -> None:
        self.rec, self.model = rec, model
        self.attention = attention_modules(model)
        self.starts: list[tuple[int, int]] = []  # (iteration, seq) where each decode step starts
        self._iteration, self._forwards = -1, 0
        self.hf_cache = False  # a Hugging Face cache was seen (its loop ends by the rule above)
        self.replay = DecodeReplay(rec, active_resolver())

    def before(self, module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        if torch.is_grad_enabled():
            return
        # a step may set its caches up after the build (gpt-fast): looked for at each forward, not kept
        if not (static_caches(self.model) or _has_cache(kwargs)):
            return
        if self.rec.iteration != self._iteration:
            self._iteration, self._forwards = self.rec.iteration, 0
        self._forwards += 1
        self.rec.enter(Phase.PREFILL if self._forwards == 1 else Phase.DECODE)
        if self._forwards > 1:
            self.starts.append((self.rec.iteration, len(self.rec.events)))

    def after(self, module: nn.Module, args: Any, kwargs: dict[str, Any], out: Any) -> None:
        if self.rec.phase not in (Phase.PREFILL, Phase.DECODE) or sys.exc_info()[1] is not None:
            return
        self.rec.outputs(out)
        cache = _past(out) or _given_cache(kwargs)
        self.hf_cache = self.hf_cache or cache is not None
        self.mark(cache)

    def last_iteration(self) -> int:
        return self._iteration

    def decode_steps(self) -> int:
        """Decode steps in the last step run."""
        return sum(1 for it, _ in self.starts if it == self._iteration)

    def mark(self, cache: Any) -> None:
        for name, tensors in static_caches(self.model):
            for t in tensors():
                self.rec.mark_tensor(t, Category.KV_CACHE, name)
        for i, layer in enumerate(getattr(cache, "layers", None) or ()):
            module = self.attention.get(i, "")
            for t in _held(layer):
                self.rec.mark_tensor(t, Category.KV_CACHE, module)


@contextmanager
def watching_generation(rec: Recorder, model: nn.Module) -> Iterator[GenerationWatch]:
    """The watch's hooks on the whole model, after the recorder's own (so its phase wins); removed on exit."""
    watch = GenerationWatch(rec, model)
    pre = model.register_forward_pre_hook(watch.before, with_kwargs=True)
    post = model.register_forward_hook(watch.after, with_kwargs=True)
    try:
        with _replaying(model, watch.replay):
            yield watch
    finally:
        pre.remove()
        post.remove()


@contextmanager
def _replaying(model: nn.Module, replay: DecodeReplay) -> Iterator[None]:
    """The model's forward through the decode replay (decode_replay.py), its signature kept (Hugging Face
    reads it); a TorchScript module's is left alone."""
    if isinstance(model, torch.jit.ScriptModule):
        yield
        return
    own = "forward" in vars(model)
    forward = model.forward

    @functools.wraps(forward)
    def replayed(*args: Any, **kwargs: Any) -> Any:
        return replay.call(forward, args, kwargs)

    model.forward = replayed  # type: ignore[method-assign]
    try:
        yield
    finally:
        if own:
            model.forward = forward  # type: ignore[method-assign]
        else:
            del model.forward


def static_caches(model: nn.Module) -> list[tuple[str, Callable[[], list[torch.Tensor]]]]:
    """A user's static caches: (module name, a function giving its cache tensors now)."""
    found: list[tuple[str, Callable[[], list[torch.Tensor]]]] = []
    for name, module in model.named_modules():
        if type(module).__name__.endswith("KVCache"):
            found.append((name, functools.partial(_held, module)))
        elif _holds_tensor(module, _META_LLAMA):
            found.append((name, functools.partial(_named, module, _META_LLAMA)))
    return found


_META_LLAMA = ("cache_k", "cache_v")


def _holds_tensor(module: nn.Module, names: tuple[str, ...]) -> bool:
    """Whether `getattr(module, name, None)` is a tensor for one of the names, without `nn.Module.__getattr__`
    raising and catching where a name is nowhere (the instance, its class, its parameters, buffers and
    submodules): `static_caches` asks every module at every generation forward, twice (8B gpt-fast: 3 ms a
    call before, 1 ms after)."""
    cls = type(module)
    if cls.__getattribute__ is object.__getattribute__ and cls.__getattr__ is nn.Module.__getattr__:
        own, params, buffers, subs = module.__dict__, module._parameters, module._buffers, module._modules
        names = tuple(
            n for n in names if n in own or n in params or n in buffers or n in subs or hasattr(cls, n)
        )
    return any(isinstance(getattr(module, n, None), torch.Tensor) for n in names)


def attention_modules(model: nn.Module) -> dict[int, str]:
    """Cache layer i's attention module: the one whose `layer_idx` is i, else the i-th `*attn*` module."""
    by_index: dict[int, str] = {}
    named: list[str] = []
    for name, module in model.named_modules():
        idx = getattr(module, "layer_idx", None)
        if isinstance(idx, int) and idx not in by_index:
            by_index[idx] = name
        last = name.rsplit(".", 1)[-1]
        if "attn" in last or last.endswith("attention"):
            named.append(name)
    return by_index or dict(enumerate(_outermost(named)))


def _outermost(names: list[str]) -> list[str]:
    return [n for n in names if not any(n.startswith(m + ".") for m in names)]


def _held(obj: Any) -> list[torch.Tensor]:
    """The tensors an object keeps: its attributes (and buffers), in lists, tuples and dicts one deep, and
    the inner tensors of a quantized tensor subclass."""
    values = list(vars(obj).values())
    if isinstance(obj, nn.Module):
        values += list(obj.buffers(recurse=False))
    found: list[torch.Tensor] = []
    for v in values:
        items = v.values() if isinstance(v, dict) else v if isinstance(v, (list, tuple)) else (v,)
        for x in items:
            if isinstance(x, torch.Tensor):
                found.extend(_inner(x))
    return found


def _inner(t: torch.Tensor) -> list[torch.Tensor]:
    flatten = getattr(t, "__tensor_flatten__", None)
    if flatten is None or type(t) is torch.Tensor or isinstance(t, nn.Parameter):
        return [t]
    names, _ = flatten()
    return [x for n in names if isinstance(x := getattr(t, n, None), torch.Tensor)]


def _named(module: nn.Module, names: tuple[str, ...]) -> list[torch.Tensor]:
    return [t for n in names if isinstance(t := getattr(module, n, None), torch.Tensor)]


_CACHE_NAMES = ("cache", "past_key_values")  # transformers 5 names the argument `cache`, earlier ones not


def _given_cache(kwargs: dict[str, Any]) -> Any:
    found = (kwargs.get(n) for n in _CACHE_NAMES)
    return next((c for c in found if hasattr(c, "layers")), None)


def _has_cache(kwargs: dict[str, Any]) -> bool:
    return _given_cache(kwargs) is not None


def _past(out: Any) -> Any:
    found = (getattr(out, n, None) for n in _CACHE_NAMES)
    return next((c for c in found if hasattr(c, "layers")), None)


def generation_notes(config: Any, watch: GenerationWatch) -> tuple[str, ...]:
    """What the report says of a generation: the steps it ran, the upper bound, autocast, compile."""
    notes: list[str] = []
    spec = config.generate
    if spec is not None or watch.starts:
        ran = f"generation: the prefill and {watch.decode_steps()} decode steps"
        notes.append(f"{ran}; {UPPER_BOUND}" if spec is not None or watch.hf_cache else ran)
    replayed = watch.replay.replayed.get(watch.last_iteration(), 0)
    if replayed:
        notes.append(
            f"decode: {replayed} of the {watch.decode_steps()} decode forwards replayed from the one before "
            "them, not run (the same inputs' shapes, the same events twice in a row; docs/generate.md)"
        )
    if config.mode == "generate" and config.recipe.amp is not None:
        notes.append(
            "generate() runs under torch.no_grad(): autocast's weight-cast cache applies (each weight cast "
            "once per autocast region and kept until it exits)"
        )
    if spec is not None and (spec.kv_cache or "").startswith("offloaded"):
        notes.append(_offloaded_note(config.device))
    static = spec is not None and spec.kv_cache in ("static", "offloaded_static")
    if static and config.device == "cuda":
        notes.append(
            "a static cache on CUDA: generate() compiles the forward itself (CompileConfig, "
            "reduce-overhead); the figure assumes disable_compile=True (the eager forward)"
        )
    return tuple(notes)


def _offloaded_note(device: str) -> str:
    if device != "cuda":
        return (
            "offloaded cache: on the CPU host and device are one, so its layers move nothing (as "
            "transformers finds it); its CUDA figures need --device cuda"
        )
    return (
        "offloaded cache: the layers wait in pinned host memory (cuda.host_bytes, not in "
        "max_memory_allocated) and come back one layer ahead; the prefetch copies are made on a side stream "
        "in a real run, whose blocks the caching allocator pools apart: reserved is modelled on one stream"
    )


def check_generate(model: nn.Module, prompt: torch.Tensor | None, spec: GenerateSpec) -> None:
    """--mode generate on a model that cannot: no `generate()`, a prompt and new tokens beyond the model's
    positions, a quantized cache whose backend is not installed; one line each, before anything runs."""
    max_new_tokens = spec.tokens()
    can = getattr(model, "can_generate", None)
    if not (callable(can) and can()):
        raise MemtraceError(
            f"--mode generate: {type(model).__name__} has no Hugging Face generate(); write your own decode "
            "loop and "
            "pass it with --step FILE.py:FUNC --mode generate"
        )
    if spec.kv_cache == "quantized":
        check_quantized_backend(model)
    if spec.kv_cache is not None and spec.kv_cache.startswith("offloaded") and spec.num_beams > 1:
        raise MemtraceError(
            f"--kv-cache {spec.kv_cache} with --num-beams: beam search reorders the host copies of an "
            "offloaded cache on the host, which the simulation does not model; use one beam or another cache"
        )
    positions = max_positions(model)
    if prompt is None or positions is None or prompt.dim() == 0:
        return
    total = int(prompt.shape[-1]) + max_new_tokens
    if total > positions:
        raise MemtraceError(
            f"--mode generate: a prompt of {prompt.shape[-1]} tokens and --max-new-tokens {max_new_tokens} "
            f"make {total} positions, beyond the model's max_position_embeddings ({positions})"
        )


def max_positions(model: nn.Module) -> int | None:
    """The model's `max_position_embeddings` (its text config's, for a vision-language model), if any."""
    config = getattr(model, "config", None)
    positions = getattr(config, "max_position_embeddings", None)
    text = getattr(config, "get_text_config", None)
    if not isinstance(positions, int) and callable(text):
        positions = getattr(text(), "max_position_embeddings", None)
    return positions if isinstance(positions, int) else None


_BACKENDS = {"quanto": ("optimum.quanto", "optimum-quanto"), "hqq": ("hqq", "hqq")}


def check_quantized_backend(model: nn.Module) -> None:
    """HF's quantized cache takes its backend from the generation config's `cache_config` (default quanto)."""
    import importlib.util

    config = getattr(getattr(model, "generation_config", None), "cache_config", None) or {}
    backend = str(config.get("backend", "quanto")) if hasattr(config, "get") else "quanto"
    module, package = _BACKENDS.get(backend, ("", ""))
    try:
        found = not module or importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        raise MemtraceError(
            f"--kv-cache quantized: its backend {backend} (the generation config's cache_config) needs "
            f"{package}, which is not installed"
        )

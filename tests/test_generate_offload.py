"""Hugging Face's offloaded KV caches (`--kv-cache offloaded|offloaded_static`, tracer/engine/offload.py).

On the CPU, host and device are one: the structure is tested here (which layers are on the host and which
on the device after each layer's update, as transformers' `Cache.update` moves them; the host copies' peak on
a CUDA target), and the CPU figure against the CPU allocator for a real `generate()` with that cache (its
CUDA streams stood in for, as transformers itself cannot run it on a CPU). The CUDA figures are owed to a
GPU run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from memtrace.tracer.core.records import Category, Result
from memtrace.tracer.engine.device_model import DeviceModel
from memtrace.tracer.engine.offload import is_host, offloaded_caches
from memtrace.tracer.engine.recorder import Recorder
from memtrace.tracer.real.measure import Measured, measure_request
from memtrace.tracer.simulate import request, run

cache_utils = pytest.importorskip("transformers.cache_utils")

LLAMA = f"{Path(__file__).resolve().parents[1] / 'benchmarks' / 'models' / 'hf_llama.py'}:build"
SMALL = {"layers": 3, "hidden": 64, "heads": 4, "kv_heads": 2, "intermediate": 128, "vocab": 128}
HEAD_DIM, KV_HEADS = 16, 2


def _generate(kv_cache: str, device: str, prompt: str = "2x8", tokens: int = 6, **kw: Any) -> Any:
    return request(
        LLAMA,
        (f"input_ids={prompt}:int64",),
        args=SMALL,
        mode="generate",
        device=device,
        max_new_tokens=tokens,
        kv_cache=kv_cache,
        **kw,
    )


@pytest.mark.parametrize("kv_cache", ["offloaded", "offloaded_static"])
def test_offloaded_on_the_cpu_against_the_cpu_allocator(kv_cache: str) -> None:
    """A real generate() with the offloaded cache on the CPU (transformers' own code, its streams stood in
    for): within 1% of the simulation, which equals the cache's twin without offloading (host and device
    are one, so `.to("cpu")` moves nothing)."""
    req = _generate(kv_cache, "cpu")
    result = run(req)
    measured = measure_request(req)
    assert isinstance(measured, Measured)
    assert result.peak_bytes == pytest.approx(measured.peak, rel=0.01)
    twin = run(_generate(kv_cache.removeprefix("offloaded").strip("_") or "dynamic", "cpu"))
    assert result.peak_bytes == twin.peak_bytes
    assert result.totals[Category.KV_CACHE] > 0


def _layer_bytes(tokens: int, batch: int = 2) -> int:
    """One layer's keys and values, fp32."""
    return 2 * batch * KV_HEADS * tokens * HEAD_DIM * 4


@pytest.mark.parametrize("static", [False, True])
def test_the_layers_move_as_transformers_moves_them(static: bool) -> None:
    """transformers' Cache.update on meta tensors, a CUDA target: after layer l's update, layer l is on the
    host and the next layer (circling back to the first) on the device, the others on the host; one layer
    on the device between updates; the update returns device tensors."""
    layers, prompt, steps, length = 3, 5, 4, 12
    rec = Recorder(DeviceModel("cuda"))
    config = _config(layers, length)
    cache = (
        cache_utils.StaticCache(config=config, max_cache_len=length, offloading=True)
        if static
        else cache_utils.DynamicCache(config=config, offloading=True)
    )
    with rec.active(), offloaded_caches():
        for step in range(steps):
            q = prompt if step == 0 else 1
            for layer in range(layers):
                kv = torch.empty(2, KV_HEADS, q, HEAD_DIM, device="meta")
                keys, values = cache.update(kv, kv.clone(), layer, cache_kwargs=_positions(step, prompt, q))
                assert not is_host(keys) and not is_host(values)
                where = [_place(x) for x in cache.layers]
                assert where[layer] == "host"
                if step > 0 or layer == layers - 1:  # the prefill's next layers are not made yet
                    assert where[(layer + 1) % layers] == "device"
                assert where.count("device") <= 1


def _place(layer: Any) -> str:
    if not layer.is_initialized:
        return "none"
    return "host" if is_host(layer.keys) else "device"


def _positions(step: int, prompt: int, q: int) -> dict[str, Any]:
    start = 0 if step == 0 else prompt + step - 1
    return {"cache_position": torch.arange(start, start + q)}


def _config(layers: int, length: int) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        num_hidden_layers=layers,
        hidden_size=KV_HEADS * 2 * HEAD_DIM,
        num_attention_heads=4,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=length,
    )


@pytest.mark.parametrize("kv_cache", ["offloaded", "offloaded_static"])
def test_on_a_cuda_target_the_host_holds_the_cache(kv_cache: str) -> None:
    """generate() with an offloaded cache on a CUDA target: the host holds all layers but the prefetched
    one (cuda.host_bytes, in the JSON): a dynamic cache's at the last forward's length, a static one's at
    its full length; the device never holds more than without offloading."""
    prompt, tokens = 8, 6
    offloaded = run(_generate(kv_cache, "cuda", tokens=tokens))
    twin = kv_cache.removeprefix("offloaded").strip("_") or "dynamic"
    dynamic = run(_generate(twin, "cuda", tokens=tokens))
    assert offloaded.cuda is not None and dynamic.cuda is not None
    # the last forward's length, and a static cache's: max_length - 1 (transformers 5's generate(), step 7)
    final = prompt + tokens - 1
    assert offloaded.cuda.host_bytes == (SMALL["layers"] - 1) * _layer_bytes(final)
    assert dynamic.cuda.host_bytes == 0
    assert offloaded.totals[Category.KV_CACHE] > 0
    assert offloaded.cuda.allocated_peak_bytes <= dynamic.cuda.allocated_peak_bytes
    data = Result.from_json(json.loads(json.dumps(offloaded.to_json())))
    assert data.cuda is not None and data.cuda.host_bytes == offloaded.cuda.host_bytes


def test_the_report_says_where_the_cache_is(capsys: pytest.CaptureFixture[str]) -> None:
    """The report's host line and note on a CUDA target; on the CPU the note says the layers move nothing."""
    from test_cli import run as cli

    common = (LLAMA, "--input", "input_ids=1x8:int64", *_args(SMALL), "--mode", "generate")
    code, out, err = cli(
        capsys, *common, "--max-new-tokens", "3", "--kv-cache", "offloaded", "--device", "cuda"
    )
    text = " ".join(out.split())  # the report wraps its notes at the terminal's width
    assert code == 0, err
    assert "offloaded cache, greedy" in text and "not in max_memory_allocated" in text
    assert any(line.strip().startswith("host ") for line in out.splitlines())
    code, out, err = cli(
        capsys, *common, "--max-new-tokens", "3", "--kv-cache", "offloaded", "--device", "cpu"
    )
    assert code == 0, err
    assert "host and device are one" in " ".join(out.split())


def _args(kwargs: dict[str, Any]) -> list[str]:
    return [x for k, v in kwargs.items() for x in ("--arg", f"{k}={v}")]

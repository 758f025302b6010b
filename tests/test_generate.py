"""`--mode generate` and generation inside `--step`: Hugging Face's `generate()` runs exactly its bound
(tracer/engine/generation.py), held against the CPU allocator on GPT-2, Llama with grouped-query attention and
Mistral with a sliding window, dynamic and static caches, greedy, sampling and beams, fp32 and bf16; the
`kv_cache` category, the prefill and decode phases, and the one-line refusals."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from test_cli import run as cli

from memtrace.tracer.core.errors import MemtraceError
from memtrace.tracer.core.records import Category, Phase, Result
from memtrace.tracer.real.measure import Measured, measure_request
from memtrace.tracer.simulate import request, run

pytest.importorskip("transformers")

MODELS = Path(__file__).resolve().parents[1] / "benchmarks" / "models"
GPT2 = f"{MODELS / 'hf_gpt2.py'}:build"
LLAMA = f"{MODELS / 'hf_llama.py'}:build"
MISTRAL = f"{MODELS / 'hf_mistral.py'}:build"
SMALL_LLAMA = {"hidden": 128, "heads": 4, "kv_heads": 2, "intermediate": 256, "vocab": 512}


def _generate(
    builder: str, prompt: str, tokens: int | str, args: dict[str, Any] | None = None, **kw: Any
) -> Any:
    return request(
        builder,
        (f"input_ids={prompt}:int64",),
        args=args or {},
        mode="generate",
        device="cpu",
        max_new_tokens=tokens,
        **kw,
    )


CASES = {
    "gpt2-dynamic-greedy": (GPT2, "2x8", 12, None, {}),
    "gpt2-static-sample": (GPT2, "2x8", 12, None, {"kv_cache": "static", "sample": True}),
    "llama-gqa-dynamic-bf16": (LLAMA, "2x8", 10, SMALL_LLAMA, {"dtype": "bf16"}),
    "llama-gqa-static-amp-bf16": (LLAMA, "1x8", 10, SMALL_LLAMA, {"kv_cache": "static", "amp": "bf16"}),
    "llama-gqa-sample": (LLAMA, "2x8", 10, SMALL_LLAMA, {"sample": True}),
    "llama-gqa-beams": (LLAMA, "1x8", 6, SMALL_LLAMA, {"num_beams": 2}),
    "mistral-window-dynamic": (MISTRAL, "2x8", 20, None, {}),
    "mistral-window-static-bf16": (MISTRAL, "1x8", 20, None, {"kv_cache": "static", "dtype": "bf16"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_generate_against_the_cpu_allocator(case: str) -> None:
    builder, prompt, tokens, args, kw = CASES[case]
    req = _generate(builder, prompt, tokens, args, **kw)
    result = run(req)
    measured = measure_request(req)
    assert isinstance(measured, Measured)
    assert result.peak_bytes == pytest.approx(measured.peak, rel=0.01), case
    assert result.totals[Category.KV_CACHE] > 0
    assert any(f"and {tokens - 1} decode steps" in n and "upper bound" in n for n in result.notes)


def test_the_cache_grows_token_by_token_and_the_peak_names_its_token() -> None:
    """A short prompt and a long generation: the peak falls in the last decode step, where the dynamic
    cache is longest; each layer's cache is filed under its attention module."""
    result = run(_generate(GPT2, "1x4", 40))
    phases = {p.phase: p for p in result.phases}
    assert set(phases) == {Phase.PREFILL, Phase.DECODE}
    assert result.peak.phase is Phase.DECODE and result.peak.token_index == 39
    assert phases[Phase.DECODE].bytes == result.peak_bytes > phases[Phase.PREFILL].bytes
    kv_rows = {m.name: m.kv_cache for m in result.modules if m.kv_cache}
    assert set(kv_rows) == {"transformer.h.0.attn", "transformer.h.1.attn"}
    assert sum(kv_rows.values()) == result.peak.by_category[Category.KV_CACHE]
    data = Result.from_json(json.loads(json.dumps(result.to_json())))
    assert data.peak.token_index == 39 and data.modules == result.modules


def test_a_step_calling_generate_runs_every_token(tmp_path: Path) -> None:
    """`model.generate()` inside --step runs its N tokens as the real step does (no stand-in)."""
    step = tmp_path / "gen.py"
    step.write_text(
        textwrap.dedent(
            """
            def step(model, inputs, optimizer):
                return model.generate(**inputs, max_new_tokens=6, do_sample=False, use_cache=True)
            """
        )
    )
    req = request(
        LLAMA, ("input_ids=1x16:int64",), args=SMALL_LLAMA, mode="infer", device="cpu", step=f"{step}:step"
    )
    result = run(req)
    measured = measure_request(req)
    assert isinstance(measured, Measured)
    assert result.peak_bytes == pytest.approx(measured.peak, rel=0.01)
    assert result.totals[Category.KV_CACHE] > 0
    assert any("the prefill and 5 decode steps" in n for n in result.notes)


def test_the_header_says_what_ran(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(
        capsys, LLAMA, "--input", "input_ids=1x8:int64", *_args(SMALL_LLAMA), "--mode", "generate",
        "--max-new-tokens", "3", "--kv-cache", "static", "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    assert "generate(), 3 new tokens, static cache, greedy" in out
    assert "its own loss" not in out and "KV cache" in out and "upper bound" in out
    code, out, err = cli(
        capsys, LLAMA, "--input", "input_ids=1x8:int64", *_args(SMALL_LLAMA), "--mode", "generate",
        "--max-new-tokens", "3", "--device", "cpu", "--json",
    )  # fmt: skip
    data = json.loads(out)
    assert set(data["phases"]) == {"prefill", "decode"} and "token_index" in data["peak"]
    assert data["totals"]["kv_cache"] > 0 and all("kv_cache" in m for m in data["modules"])


def _args(kwargs: dict[str, Any]) -> list[str]:
    return [x for k, v in kwargs.items() for x in ("--arg", f"{k}={v}")]


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--mode", "generate"], "--mode generate needs --max-new-tokens"),
        (["--max-new-tokens", "4"], "need --mode generate"),
        (["--kv-cache", "static"], "--kv-cache is for --mode generate"),
        (
            ["--mode", "generate", "--max-new-tokens", "4", "--optimizer", "sgd"],
            "--optimizer is for training",
        ),
        (
            ["--mode", "generate", "--max-new-tokens", "4", "--accumulate", "2"],
            "--accumulate is for training",
        ),
        (["--mode", "generate", "--max-new-tokens", "4", "--loss", "ce"], "--loss is for training"),
        (
            ["--mode", "generate", "--max-new-tokens", "30", "--arg", "positions=32"],
            "max_position_embeddings",
        ),
        (["--mode", "generate", "--max-new-tokens", "4", "--kv-cache", "quantized"], "--kv-cache quantized"),
        (
            ["--mode", "generate", "--max-new-tokens", "4", "--kv-cache", "offloaded", "--num-beams", "2"],
            "--kv-cache offloaded with --num-beams",
        ),
    ],
)
def test_generate_refusals_are_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    if "quantized" in argv:
        import importlib.util

        if importlib.util.find_spec("optimum") is not None or importlib.util.find_spec("hqq") is not None:
            pytest.skip("a quantized cache's backend is installed here")
    code, out, err = cli(capsys, LLAMA, "--input", "input_ids=1x8:int64", "--device", "cpu", *argv)
    assert code == 2, (out, err)
    assert needle in err and len(err.strip().splitlines()) == 1, err


def test_a_model_without_generate_is_told_the_alternative(capsys: pytest.CaptureFixture[str]) -> None:
    nano = f"{MODELS / 'nanogpt.py'}:build"
    code, _out, err = cli(
        capsys, nano, "--input", "1x8:int64", "--mode", "generate", "--max-new-tokens", "4", "--device", "cpu"
    )
    assert code == 2 and "--step" in err and len(err.strip().splitlines()) == 1


def test_a_user_static_cache_and_decode_loop(tmp_path: Path) -> None:
    """gpt-fast's shape: `KVCache` modules set up inside the step, a prefill then single-token forwards under
    no_grad: the cache's buffers are `kv_cache`, filed under their module, the forwards prefill and decode."""
    path = tmp_path / "fast.py"
    path.write_text(FAST)
    req = request(f"{path}:build", ("2x8:int64",), mode="infer", device="cpu", step=f"{path}:step")
    result = run(req)
    per_layer = 2 * (2 * 4 * (8 + 8) * 8) * 4  # k_cache and v_cache: (B, H, S, D) fp32
    assert {m.name: m.kv_cache for m in result.modules if m.kv_cache} == {
        "layers.0.kv_cache": per_layer,
        "layers.1.kv_cache": per_layer,
    }
    assert result.peak.by_category[Category.KV_CACHE] == 2 * per_layer
    assert {p.phase for p in result.phases} >= {Phase.PREFILL, Phase.DECODE}
    assert any("the prefill and 7 decode steps" in n for n in result.notes)
    assert not any("upper bound" in n for n in result.notes)  # the loop is the user's, its bound exact


FAST = textwrap.dedent(
    """
    import torch
    from torch import nn
    import torch.nn.functional as F

    class KVCache(nn.Module):
        def __init__(self, b, h, s, d):
            super().__init__()
            self.register_buffer("k_cache", torch.zeros(b, h, s, d))
            self.register_buffer("v_cache", torch.zeros(b, h, s, d))

        def update(self, pos, k, v):
            self.k_cache[:, :, pos] = k
            self.v_cache[:, :, pos] = v
            return self.k_cache, self.v_cache

    class Attn(nn.Module):
        def __init__(self, d, h):
            super().__init__()
            self.h, self.qkv, self.o, self.kv_cache = h, nn.Linear(d, 3 * d), nn.Linear(d, d), None

        def forward(self, x, pos):
            b, t, d = x.shape
            q, k, v = self.qkv(x).view(b, t, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
            k, v = self.kv_cache.update(pos, k, v)
            return self.o(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d))

    class Tiny(nn.Module):
        def __init__(self, vocab=64, d=32, h=4, layers=2):
            super().__init__()
            self.emb, self.head = nn.Embedding(vocab, d), nn.Linear(d, vocab)
            self.layers = nn.ModuleList(Attn(d, h) for _ in range(layers))

        def setup_caches(self, b, s):
            for layer in self.layers:
                layer.kv_cache = KVCache(b, layer.h, s, self.emb.embedding_dim // layer.h)

        def forward(self, idx, pos):
            x = self.emb(idx)
            for layer in self.layers:
                x = x + layer(x, pos)
            return self.head(x)

    def build():
        return Tiny()

    def step(model, inputs, optimizer):
        (idx,) = inputs
        b, t = idx.shape
        model.setup_caches(b, t + 8)
        with torch.no_grad():
            tok = model(idx, torch.arange(t, device=idx.device))[:, -1:].argmax(-1)
            for i in range(7):
                tok = model(tok, torch.tensor([t + i], device=idx.device))[:, -1:].argmax(-1)
    """
)


def test_a_stop_condition_is_known_through_the_ops_hf_uses() -> None:
    """HF's loop: `unfinished & ~criteria`, `.max() == 0`, `bool()` on known values (a fill, the
    criteria settled False); with one side of `&` known all False, the unknown side cannot matter."""
    from memtrace.tracer.core.assume import Policy
    from memtrace.tracer.engine.data_dependent import resolving
    from memtrace.tracer.engine.data_observer import resolved_alone
    from memtrace.tracer.engine.generation import settle_false

    with resolving(Policy(), lambda: "generate") as used, resolved_alone():
        unknown = torch.empty(3, dtype=torch.bool, device="meta")
        eos = torch.empty(3, dtype=torch.bool, device="meta")
        settle_false(eos)
        for done in (False, True):  # MaxLengthCriteria: a fill of a Python bool
            criteria = torch.full((3,), False, device="meta") | torch.full((3,), done, device="meta") | eos
            unfinished = torch.ones(3, dtype=torch.long, device="meta") & ~criteria
            assert bool(unfinished.max() == 0) is done
        assert bool((unknown & torch.zeros(3, dtype=torch.bool, device="meta")).any()) is False
        assert bool((unknown | torch.ones(3, dtype=torch.bool, device="meta")).all()) is True
    assert not used  # nothing was assumed
    real = torch.ones(3, dtype=torch.bool)
    settle_false(real)
    assert not real.any()


def test_generate_args_reach_generate() -> None:
    """`--generate-arg use_cache=false`: no cache, so no kv_cache and no decode phase; the header says it."""
    result = run(_generate(LLAMA, "1x8", 3, SMALL_LLAMA, generate_args=(("use_cache", False),)))
    assert result.totals[Category.KV_CACHE] == 0
    assert Phase.DECODE not in {p.phase for p in result.phases}
    assert result.step.endswith("use_cache=False")
    with pytest.raises(MemtraceError, match="use memtrace's own flag"):
        _generate(LLAMA, "1x8", 3, SMALL_LLAMA, generate_args=(("num_beams", 2),))


def test_static_caches_read_a_modules_attributes_as_getattr_does() -> None:
    """Meta's Llama keeps `cache_k`/`cache_v` as tensor attributes: found as a plain attribute, a buffer, a
    property and through an overridden `__getattr__` (a wrapper's), not where the name is absent or None."""
    from torch import nn

    from memtrace.tracer.engine.generation import static_caches

    class Plain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cache_k = torch.zeros(2)

    class Buffer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("cache_v", torch.zeros(2))

    class Property(nn.Module):
        @property
        def cache_k(self) -> torch.Tensor:
            return torch.zeros(2)

    class Wrapper(nn.Module):
        def __getattr__(self, name: str) -> object:
            return torch.zeros(2) if name == "cache_v" else super().__getattr__(name)

    class Empty(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cache_k = None

    model = nn.ModuleDict(
        {"plain": Plain(), "buffer": Buffer(), "prop": Property(), "wrap": Wrapper(), "empty": Empty()}
    )
    model.add_module("linear", nn.Linear(2, 2))
    names = ("cache_k", "cache_v")
    reference = [
        n
        for n, m in model.named_modules()
        if any(isinstance(getattr(m, a, None), torch.Tensor) for a in names)
    ]
    assert [n for n, _ in static_caches(model)] == reference == ["plain", "buffer", "prop", "wrap"]

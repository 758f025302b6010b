"""The benchmark suite of `memtrace bench`: one `Case` per entry; the suite grows by adding one.

A case names its builder (`FILE.py:FUNC`, here relative to this file's folder, or a callable), its inputs as
`--input` takes them, and the step's recipe as `memtrace`'s flags name them (mode, optimizer, loss, amp,
dtype, checkpoint, accumulate). `needs` lists the modules it imports: without them it is skipped with the
reason (`pip install 'torch-memtrace[bench]'`). Tag `ci`: the CPU-sized subset `.ci/run` gates (no
torchvision, each case a few seconds to simulate and measure on a 2-core CPU).

memtrace bench --filter ci --device cpu --baseline benchmarks/baselines/cpu.json
"""

from __future__ import annotations

from pathlib import Path

from memtrace.tracer.real.bench import Case

MODELS = Path(__file__).resolve().parent / "models"
TV = ("torchvision",)
HF = ("transformers",)


def _m(target: str) -> str:
    return f"{MODELS / target}"


def _tokens(batch: int, seq: int, *names: str) -> tuple[str, ...]:
    return tuple(f"{name}={batch}x{seq}:int64" for name in names)


def _torchvision(name: str, batch: int, size: int = 224) -> Case:
    return Case(
        name,
        _m("torchvision_models.py:build"),
        (f"{batch}x3x{size}x{size}",),
        args={"name": name},
        loss="ce",
        needs=TV,
    )


SUITE: tuple[Case, ...] = (
    # the repository's own models
    Case("seed_cnn_256", _m("seed_cnn.py:build"), ("2x3x144x256",), loss="ce", tags=("ci",)),
    Case(
        "seed_cnn_1080p",
        _m("seed_cnn.py:build"),
        ("1x3x1080x1920",),
        args={"h": 1080, "w": 1920},
        loss="ce",
        note="the seed analysis: about 10 GB on the CPU allocator, 12 GB reserved on cuda",
    ),
    Case("lstm_tagger", _m("lstm_tagger.py:build"), ("4x32:int64",), loss="ce", tags=("ci",)),
    Case("unet_small", _m("unet.py:small"), ("2x3x64x64",), loss="mse", tags=("ci",)),
    Case(
        "unet_diffusion",
        _m("unet.py:diffusion"),
        ("2x3x32x32", "2:int64"),
        loss="mse",
        note="attention over transposed pixel maps: the math path on the CPU (not in ci: 40 s measured)",
    ),
    # Hugging Face models from configs (no download), trained with their own loss from `labels`
    Case(
        "gpt2",
        _m("hf_gpt2.py:build"),
        _tokens(2, 64, "input_ids", "labels"),
        optimizer="adamw",
        needs=HF,
        tags=("ci",),
    ),
    Case(
        "bert",
        _m("hf_zoo.py:bert"),
        _tokens(2, 64, "input_ids", "labels"),
        optimizer="adamw",
        needs=HF,
        tags=("ci",),
    ),
    Case(
        "llama",
        _m("hf_zoo.py:llama"),
        _tokens(2, 64, "input_ids", "labels"),
        args={"kv_heads": 4},
        optimizer="adamw",
        needs=HF,
        tags=("ci",),
        note="multi-head attention, as Llama 2 7B",
    ),
    Case(
        "llama_gqa",
        _m("hf_zoo.py:llama"),
        _tokens(2, 64, "input_ids", "labels"),
        args={"kv_heads": 2},
        optimizer="adamw",
        needs=HF,
        note="grouped-query attention, as Llama 3",
    ),
    Case(
        "t5",
        _m("hf_zoo.py:t5"),
        _tokens(2, 64, "input_ids", "labels"),
        optimizer="adamw",
        needs=HF,
        tags=("ci",),
    ),
    # torchvision (where it is installed: it needs a torch build it matches)
    _torchvision("resnet50", 8),
    _torchvision("mobilenet_v3_large", 8),
    _torchvision("vit_b_16", 8),
    _torchvision("convnext_tiny", 8),
    _torchvision("efficientnet_b0", 8),
)

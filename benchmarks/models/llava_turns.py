"""A multi-turn chat with a LLaVA-style model as a memtrace step: each turn is one image and a question,
and the KV cache is kept across turns (`past_key_values` passed back), as a chat server keeps it. Nothing
in it is memtrace's: the same file runs for real.

The inputs name the turns: `input_ids` and `pixel_values` for the first, `input_ids_2` and
`pixel_values_2` for a second, and so on; each turn's ids hold its image's placeholder tokens. The step
runs the turns present in order, each one forward of the whole turn into the same `DynamicCache`, under
`torch.no_grad()`, and returns the last turn's logits.

    memtrace benchmarks/models/hf_llava.py:build --input input_ids=1x40:int64 \\
        --input pixel_values=1x3x32x32 --input input_ids_2=1x30:int64 --input pixel_values_2=1x3x32x32 \\
        --mode generate --step benchmarks/models/llava_turns.py:turns --device cpu
"""

from __future__ import annotations

import inspect
from typing import Any

import torch


def turns(model: Any, inputs: dict[str, torch.Tensor], optimizer: Any = None) -> torch.Tensor:
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    logits = None
    with torch.no_grad():
        for suffix in _turns(inputs):
            turn = {
                "input_ids": inputs[f"input_ids{suffix}"],
                "pixel_values": inputs[f"pixel_values{suffix}"],
            }
            out = model(**turn, **{_cache_arg(model): cache}, use_cache=True)
            cache, logits = out.past_key_values, out.logits
    assert logits is not None
    return logits


def _cache_arg(model: Any) -> str:
    """`past_key_values`, which transformers 5 renames `cache` (the old name still works, with a warning)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _turns(inputs: dict[str, torch.Tensor]) -> list[str]:
    """The turns' name suffixes, in order: "", "_2", "_3", ..."""
    found = [""]
    while f"input_ids_{len(found) + 1}" in inputs:
        found.append(f"_{len(found) + 1}")
    return found

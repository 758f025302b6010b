"""gpt-fast's `generate()` (pytorch-labs/gpt-fast's `generate.py`, abridged) as a memtrace step: the caches
set up inside the step (`with torch.device(device): model.setup_caches(...)`), a prefill on the prompt, then
a `for` loop of `max_new_tokens - 1` single-token decode forwards (`decode_one_token`: forward,
`logits[:, -1]`, argmax or multinomial sampling) writing into a preallocated `seq`. Nothing in it is
memtrace's: the same file runs for real.

`step_while` is the same loop as a `while` bounded by the length with an EOS `break`; `step_until_eos` a
`while True:` whose only exit is the EOS `break` (no bound of its own: `--assume decode.tokens=N`).

    memtrace benchmarks/models/gptfast.py:build --input 1x16:int64 --mode infer \\
        --step benchmarks/models/gptfast_generate.py:step --device cpu
"""

from __future__ import annotations

from typing import Any

import torch

Transformer = Any  # gptfast.Transformer (this file imports nothing of its own folder)

MAX_NEW_TOKENS = 8
EOS = -1  # no token is -1: a real run never stops early, as the simulation does not


def multinomial_sample_one_no_sync(probs_sort: torch.Tensor) -> torch.Tensor:
    q = torch.empty_like(probs_sort).exponential_(1)
    return torch.argmax(probs_sort / q, dim=-1, keepdim=True).to(dtype=torch.int)


def logits_to_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None) -> torch.Tensor:
    logits = logits / max(temperature, 1e-5)
    if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        pivot = v.select(-1, -1).unsqueeze(-1)
        logits = torch.where(logits < pivot, -float("Inf"), logits)
    return torch.nn.functional.softmax(logits, dim=-1)


def sample(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, greedy: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    probs = logits_to_probs(logits[:, -1], temperature, top_k)
    if greedy:
        return torch.argmax(probs, dim=-1, keepdim=True).to(dtype=torch.int), probs
    return multinomial_sample_one_no_sync(probs), probs


def prefill(model: Transformer, x: torch.Tensor, input_pos: torch.Tensor, **kw: Any) -> torch.Tensor:
    logits = model(x, input_pos)
    return sample(logits, **kw)[0]


def decode_one_token(
    model: Transformer, x: torch.Tensor, input_pos: torch.Tensor, **kw: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    assert input_pos.shape[-1] == 1
    logits = model(x, input_pos)
    return sample(logits, **kw)


def decode_n_tokens(
    model: Transformer, cur_token: torch.Tensor, input_pos: torch.Tensor, num_new_tokens: int, **kw: Any
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    new_tokens, new_probs = [], []
    for _ in range(num_new_tokens):
        next_token, next_prob = decode_one_token(model, cur_token, input_pos, **kw)
        input_pos += 1
        new_tokens.append(next_token.clone())
        new_probs.append(next_prob.clone())
        cur_token = next_token.clone()
    return new_tokens, new_probs


def _start(model: Transformer, prompt: torch.Tensor, max_new_tokens: int, **kw: Any) -> Any:
    """The caches, the preallocated `seq` and the prefill's token, as gpt-fast's `generate()` starts."""
    batch_size, t = prompt.shape
    t_new = t + max_new_tokens
    max_seq_length = min(t_new, model.config.block_size)
    device, dtype = prompt.device, prompt.dtype
    with torch.device(device):
        model.setup_caches(max_batch_size=batch_size, max_seq_length=max_seq_length)
    seq = torch.empty(batch_size, t_new, dtype=dtype, device=device)
    seq[:, :t] = prompt
    input_pos = torch.arange(0, t, device=device)
    next_token = prefill(model, prompt, input_pos, **kw).clone()
    seq[:, t] = next_token.squeeze(-1)
    return seq, next_token, torch.tensor([t], device=device, dtype=torch.int)


@torch.no_grad()
def generate(model: Transformer, prompt: torch.Tensor, max_new_tokens: int, **kw: Any) -> torch.Tensor:
    seq, next_token, input_pos = _start(model, prompt, max_new_tokens, **kw)
    t = prompt.shape[1]
    generated, _ = decode_n_tokens(model, next_token, input_pos, max_new_tokens - 1, **kw)
    seq[:, t + 1 :] = torch.cat(generated, dim=-1)
    return seq


@torch.no_grad()
def generate_while(
    model: Transformer, prompt: torch.Tensor, max_new_tokens: int, eos: int = EOS, **kw: Any
) -> torch.Tensor:
    """The decode loop as a `while` over the length, leaving at EOS."""
    seq, cur, input_pos = _start(model, prompt, max_new_tokens, **kw)
    pos = prompt.shape[1] + 1
    while pos < seq.shape[1]:
        cur, _ = decode_one_token(model, cur, input_pos, **kw)
        input_pos += 1
        seq[:, pos] = cur.squeeze(-1)
        pos += 1
        if (cur == eos).all():
            break
    return seq[:, :pos]


@torch.no_grad()
def generate_until_eos(model: Transformer, prompt: torch.Tensor, block: int, eos: int = EOS) -> torch.Tensor:
    """A loop with no bound of its own: caches for `block` new tokens, and the only exit an EOS `break`."""
    _, cur, input_pos = _start(model, prompt, block)
    tokens = [cur]
    while True:
        cur, _ = decode_one_token(model, cur, input_pos)
        input_pos += 1
        tokens.append(cur.clone())
        if (cur == eos).all():
            break
    return torch.cat([prompt, *tokens], dim=-1)


def step(model: Transformer, inputs: tuple[torch.Tensor, ...], optimizer: Any) -> None:
    generate(model, inputs[0], MAX_NEW_TOKENS)


def step_sampling(model: Transformer, inputs: tuple[torch.Tensor, ...], optimizer: Any) -> None:
    generate(model, inputs[0], MAX_NEW_TOKENS, greedy=False, top_k=50)


def step_200(model: Transformer, inputs: tuple[torch.Tensor, ...], optimizer: Any) -> None:
    generate(model, inputs[0], 200)


def step_while(model: Transformer, inputs: tuple[torch.Tensor, ...], optimizer: Any) -> None:
    generate_while(model, inputs[0], MAX_NEW_TOKENS)


def step_until_eos(model: Transformer, inputs: tuple[torch.Tensor, ...], optimizer: Any) -> None:
    generate_until_eos(model, inputs[0], MAX_NEW_TOKENS)

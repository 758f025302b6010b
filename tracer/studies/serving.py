"""Fit and sweep for serving (`--mode generate`): the symbols a generation adds, and the model's positions.

With `--mode generate`, a symbol may stand for the batch (`input_ids=Bx4096`), the prompt's length
(`input_ids=1xS`) or the new tokens (`--max-new-tokens N`). A prompt and its new tokens must fit the model's
`max_position_embeddings`: that bounds the search for a prompt length or a generation length, and the result
says when that bound, not the GPU, is what stopped it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ..core.errors import MemtraceError
from ..core.records import InputSpec
from ..engine.generation import max_positions

if TYPE_CHECKING:
    from ..simulate import Request


def tokens_symbol(request: Request) -> str | None:
    """The symbol `--max-new-tokens` names, if any."""
    spec = request.config.generate
    return spec.symbol if spec is not None else None


def bind_tokens(request: Request, values: dict[str, int]) -> Request:
    """`--max-new-tokens N` given its value."""
    spec = request.config.generate
    symbol = tokens_symbol(request)
    if spec is None or symbol is None or symbol not in values:
        return request
    bound = replace(spec, max_new_tokens=values[symbol])
    return replace(request, config=replace(request.config, generate=bound))


def prompt_spec(inputs: tuple[InputSpec, ...]) -> InputSpec | None:
    """The prompt generate() is given: the input named `input_ids`, else the first input."""
    return next((s for s in inputs if s.name == "input_ids"), inputs[0] if inputs else None)


@dataclass(frozen=True)
class Context:
    """What the model's positions allow the symbol: `limit` (None: no bound from positions) of
    `positions`, and how the total context is made of the prompt and the new tokens."""

    limit: int | None
    positions: int | None
    prompt: int | str | None
    tokens: int | str | None

    def total(self, symbol: str, value: int) -> int | None:
        """The prompt and the new tokens at `symbol` = value; None unless both are known then."""
        parts = [value if p == symbol else p for p in (self.prompt, self.tokens)]
        return sum(p for p in parts if isinstance(p, int)) if all(isinstance(p, int) for p in parts) else None


def context_of(request: Request, symbol: str) -> Context:
    """The positions' bound on a prompt length or a generation length (`--mode generate` only)."""
    spec = request.config.generate
    prompt = prompt_spec(request.inputs)
    if request.config.mode != "generate" or spec is None or prompt is None or not prompt.shape:
        return Context(None, None, None, None)
    length, tokens = prompt.shape[-1], spec.max_new_tokens
    if symbol not in (length, tokens):
        return Context(None, None, length, tokens)  # the batch: positions bound nothing
    from ..simulate import build

    positions = max_positions(build(request.builder, dict(request.builder_kwargs)).model)
    if positions is None:
        return Context(None, None, length, tokens)
    fixed = sum(p for p in (length, tokens) if isinstance(p, int))
    both = length == tokens == symbol
    limit = (positions - fixed) // (2 if both else 1)
    if limit < 1:
        raise MemtraceError(
            f"fit {symbol}: the model's max_position_embeddings ({positions}) leaves no room for it beside "
            f"{fixed} other positions"
        )
    return Context(limit, positions, length, tokens)

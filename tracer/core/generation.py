"""`--mode generate`: what Hugging Face's `generate()` is asked to run (no torch).

`GenerateSpec` holds the flags: `--max-new-tokens N` (a number, or a symbol such as `N` for fit and sweep),
`--kv-cache NAME` (HF's `cache_implementation`;
None: the model's own), `--sample`, `--num-beams K` and `--generate-arg key=value`. Its `kwargs()` are the
keyword arguments of `generate()`, its `text()` the words of the report's header.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import MemtraceError

KV_CACHES = ("dynamic", "static", "offloaded", "offloaded_static", "quantized")
UPPER_BOUND = "EOS cannot end generation early on meta: the figure is an upper bound for N new tokens"
Value = bool | int | float | str | None


def is_symbol(value: object) -> bool:
    """A symbol for fit and sweep: an upper-case name such as `N` (as `--input`'s `B` or `S`)."""
    return isinstance(value, str) and value.isidentifier() and value.isupper()


@dataclass(frozen=True)
class GenerateSpec:
    max_new_tokens: int | str  # a str is a symbol (`N`), bound by fit and sweep before anything runs
    kv_cache: str | None = None  # None: the model's own (its generation config's)
    sample: bool = False
    num_beams: int = 1
    args: tuple[tuple[str, Value], ...] = ()  # --generate-arg key=value

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, str):
            if not is_symbol(self.max_new_tokens):
                raise MemtraceError(
                    f"--max-new-tokens {self.max_new_tokens!r}: a positive integer, or a symbol such as N"
                )
        elif self.max_new_tokens < 1:
            raise MemtraceError("--max-new-tokens must be at least 1")
        if self.kv_cache is not None and self.kv_cache not in KV_CACHES:
            raise MemtraceError(f"unknown --kv-cache {self.kv_cache!r} ({', '.join(KV_CACHES)})")
        if self.num_beams < 1:
            raise MemtraceError("--num-beams must be at least 1")
        ours = {"max_new_tokens", "cache_implementation", "do_sample", "num_beams"}
        for key, _ in self.args:
            if key in ours:
                raise MemtraceError(f"--generate-arg {key}=...: use memtrace's own flag for {key}")

    @property
    def symbol(self) -> str | None:
        """The symbol `--max-new-tokens` names (fit and sweep give it values), None for a number."""
        return self.max_new_tokens if isinstance(self.max_new_tokens, str) else None

    def tokens(self) -> int:
        """The number of new tokens; a symbol not yet bound is refused in one line."""
        if isinstance(self.max_new_tokens, str):
            raise MemtraceError(
                f"--max-new-tokens {self.max_new_tokens} is a symbol: give a number (symbols are for fit "
                "and sweep)"
            )
        return self.max_new_tokens

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `generate()`: greedy unless --sample, a KV cache (the one named, else
        the model's own), then the --generate-arg pairs (`use_cache=false` turns the cache off)."""
        out: dict[str, Any] = {"max_new_tokens": self.tokens(), "do_sample": self.sample}
        out["use_cache"] = True  # generate()'s default, whatever a builder set for training
        if self.num_beams > 1:
            out["num_beams"] = self.num_beams
        if self.kv_cache is not None:
            out["cache_implementation"] = self.kv_cache
        return {**out, **dict(self.args)}

    def decoding(self) -> str:
        how = "sampling (top-k/top-p of the generation config)" if self.sample else "greedy"
        return f"beam search, {self.num_beams} beams, {how}" if self.num_beams > 1 else how

    def text(self) -> str:
        """The header's words: `generate(), 6 new tokens, dynamic cache, greedy`."""
        cache = f"{self.kv_cache} cache" if self.kv_cache else "the model's own cache"
        extra = "".join(f", {k}={v}" for k, v in self.args)
        return f"generate(), {self.max_new_tokens} new tokens, {cache}, {self.decoding()}{extra}"

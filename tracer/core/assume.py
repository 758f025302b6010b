"""The assumption policy for data-dependent sizes and values (pure: no torch).

A meta simulation has shapes but no values, so what `nonzero`, one-argument `where`, `.item()`/`bool()` and
top-k routing produce must be *chosen*. Each choice follows a stated policy that `--assume KEY=VALUE`
changes, and each choice made is recorded as an `Assumption` in the Result:

- `moe.routing=balanced|worst`: the experts a top-k picks. balanced (default): tokens*k spread evenly over
  the experts; worst: every token picks the same first k experts (each of them takes every token, the most
  one expert can take).
- `moe.tokens=N,N,...[;N,N,...]`: measured tokens per expert, one group per routing module (per MoE layer)
  in the order they first route, the last group repeating; the counts of a group sum to tokens*k (every
  iteration and recomputation of a layer routes the same). Overrides moe.routing.
- `nms.keep=F|N,N,...`: what a `torchvision::nms` over boxes with no known values keeps. A fraction
  (`0.3`; default `1.0`, every box: the model's own caps, such as RPN's `post_nms_top_n` and the
  detections per image, then cut it) or measured counts, one per call in the order they run, the last
  repeating (each at most the boxes given).
- `nonzero=all|N,N,...`: what a `nonzero`/`where` whose input has no known values keeps: every element
  (default, the upper bound), or measured counts, one per `nonzero` of the step in the order they run
  (every call counts, those memtrace computes from known values too; the last repeating).

Measured counts come from `memtrace verify`, which prints the `--assume` values of its real step.
- `item=V,V,...`: measured values of the step's `.item()` calls (and of `bool()`, `int()` and `float()` of
  a tensor), one per call in the order they run (every call counts; `1`/`0` for a boolean), the last
  repeating; `true`/`false` stand for 1/0. Without it, an `.item()` of unknown values is a check (below)
  when boolean, else an error.
- `check=pass`: a Python `if`/`assert` on a tensor with no known values (a consistency check such as a
  VLM's image-token count) passes: the inputs are taken to be consistent. Inside a loop, the bool that
  decides whether the loop goes on (`while not done:`, `if (tok == eos).all(): break`, a helper returning
  whether sequences remain) takes the value that continues it, read from the bytecode of the code that
  asks (tracer/engine/bytecode.py): the loop runs to its own bound (`range`, `max_new_tokens`), and the
  report names the loop and how many times it went on.
- `decode.tokens=N`: a loop whose exit the simulation decides (a `while True:` with an EOS `break`, which
  has no bound of its own) reads its exit check N times: it continues at the first N-1 reads and leaves at
  the N-th, the N-th token of a decode loop that checks each token (per entry of the loop, per step).
  Without it, a loop that never ends by itself stops at `LOOP_BUDGET` reads of its exit (10,000, also
  where `item` values keep it going) with a one-line error naming the loop, the budget and this key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .errors import MemtraceError

ROUTINGS = ("balanced", "worst")
KEYS = {
    "moe.routing": "balanced|worst",
    "moe.tokens": "N,N,...[;N,N,...]",
    "nms.keep": "F|N,N,...",
    "nonzero": "all|N,N,...",
    "item": "V,V,...",
    "check": "pass",
    "decode.tokens": "N",
}
LOOP_BUDGET = 10_000  # reads of one loop's exit in one run of the loop decided by the policy, then an error
KEY_OF_OP = {"nonzero": "nonzero", "masked_select": "nonzero", "nms": "nms.keep", "item": "item"}
KEY_OF_OP |= {"item (bool)": "item", "topk": "moe.tokens", "loop exit": "decode.tokens"}
DEFAULTS = {"moe.routing": "balanced", "nms.keep": "1.0", "nonzero": "all", "check": "pass"}


def parse_assume(text: str) -> tuple[str, str]:
    """`KEY=VALUE` with a known key and a valid value, else a one-line MemtraceError."""
    key, sep, value = text.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not key or not value:
        raise MemtraceError(f"--assume {text!r}: expected KEY=VALUE (keys: {', '.join(KEYS)})")
    if key not in KEYS:
        raise MemtraceError(f"--assume {text!r}: unknown key {key!r} (keys: {', '.join(KEYS)})")
    if key == "moe.tokens":
        token_groups(value)
    elif key == "nms.keep":
        nms_keep(value)
    elif key == "nonzero":
        nonzero_counts(value)
    elif key == "item":
        item_values(value)
    elif key == "decode.tokens":
        decode_tokens(value)
    elif value not in KEYS[key].split("|"):
        raise MemtraceError(f"--assume {key}={value}: expected {KEYS[key]}")
    return key, value


def token_groups(value: str) -> tuple[tuple[int, ...], ...]:
    """`12,20;16,16` -> ((12, 20), (16, 16)): tokens per expert, one group per routing module."""
    return _count_groups("moe.tokens", value, ";", "counts such as 12,20,16,16")


def _count_groups(
    key: str, value: str, sep: str, expected: str, empty: bool = False
) -> tuple[tuple[int, ...], ...]:
    """Comma-separated counts in groups `sep` apart, none negative; `empty`: a group may hold none (a step
    that made no call)."""
    try:
        groups = tuple(tuple(int(n) for n in g.split(",") if n or not empty) for g in value.split(sep))
    except ValueError:
        raise MemtraceError(f"--assume {key}={value}: expected {expected}") from None
    if any(n < 0 for group in groups for n in group):
        raise MemtraceError(f"--assume {key}={value}: counts cannot be negative")
    return groups


def step_group(value: str, step: int) -> str:
    """Measured values are per step, steps apart by `/` (`6000,5990/6000,5872`): the group of `step`
    (0-based), the last repeating."""
    groups = value.split("/")
    return groups[min(step, len(groups) - 1)]


def nms_keep(value: str) -> float | tuple[int, ...]:
    """`0.3` -> 0.3 (a fraction in (0, 1]); `120,98` -> (120, 98) (counts per call); per step with `/`,
    each group checked (the first returned)."""
    expected = "a fraction in (0, 1] such as 0.3, or counts such as 120,98"
    if "." in value and "/" not in value:
        try:
            fraction = float(value)
        except ValueError:
            fraction = 0.0
        if not 0.0 < fraction <= 1.0:
            raise MemtraceError(f"--assume nms.keep={value}: expected {expected}")
        return fraction
    return _count_groups("nms.keep", value, "/", expected, empty=True)[0]


def nonzero_counts(value: str) -> tuple[int, ...] | None:
    """`all` -> None (every element); `12,0,5` -> (12, 0, 5) (counts per call; per step with `/`, each
    group checked, the first returned)."""
    if value == "all":
        return None
    return _count_groups("nonzero", value, "/", "all, or counts such as 12,0,5", empty=True)[0]


_BOOLS = {"true": 1.0, "false": 0.0}


def item_values(value: str) -> tuple[float, ...]:
    """`3,0.5,1` -> (3.0, 0.5, 1.0): the values of a step's `.item()` calls in order (per step with `/`,
    each group checked, the first returned); `true`/`false` stand for 1/0."""
    try:
        groups = [
            tuple(_BOOLS[v.lower()] if v.lower() in _BOOLS else float(v) for v in group.split(",") if v)
            for group in value.split("/")
        ]
    except ValueError:
        raise MemtraceError(
            f"--assume item={value}: expected numbers such as 3,0.5,1 (or true, false)"
        ) from None
    return groups[0]


def decode_tokens(value: str) -> int:
    """`decode.tokens=N`: a positive count of reads of a loop's exit check."""
    if not value.isdigit() or int(value) < 1:
        raise MemtraceError(f"--assume decode.tokens={value}: expected a count of at least 1, such as 64")
    return int(value)


def _at(values: tuple[Any, ...], call: int) -> Any:
    return values[min(call, len(values) - 1)]


def item_value(value: str, call: int, step: int = 0) -> float:
    return float(_at(item_values(step_group(value, step)), call))


def kept_elements(value: str, elements: int, call: int, step: int = 0) -> int:
    """Elements a `nonzero` over `elements` unknown ones keeps at its `call`-th call of the step."""
    counts = nonzero_counts(step_group(value, step))
    if counts is None:
        return elements
    return min(elements, int(_at(counts, call)))


def kept_boxes(value: str, boxes: int, call: int, step: int = 0) -> int:
    """Boxes an nms keeps of `boxes` at its `call`-th call (0-based) of the step by the `nms.keep` value."""
    keep = nms_keep(step_group(value, step))
    if isinstance(keep, float):
        return min(boxes, math.ceil(keep * boxes))
    return min(boxes, int(_at(keep, call)))


@dataclass(frozen=True)
class Policy:
    """The `--assume` pairs given; every key not given takes its default."""

    given: tuple[tuple[str, str], ...] = ()
    _values: dict[str, str] = field(default_factory=dict, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        for key, value in self.given:
            parse_assume(f"{key}={value}")
            self._values[key] = value

    def value(self, key: str) -> tuple[str, str]:
        """(value, source): source is `--assume` when given, else `default`."""
        if key in self._values:
            return self._values[key], "--assume"
        return DEFAULTS.get(key, ""), "default"

    def text(self) -> str:
        return " ".join(f"--assume {k}={v}" for k, v in self.given)


def expert_counts(tokens: int, k: int, experts: int, routing: str) -> tuple[int, ...]:
    """Tokens per expert for `tokens` tokens each picking `k` of `experts` by the routing policy."""
    if routing == "worst":
        return tuple(tokens if e < k else 0 for e in range(experts))
    base, extra = divmod(tokens * k, experts)
    return tuple(base + (1 if e < extra else 0) for e in range(experts))


def check_counts(counts: tuple[int, ...], tokens: int, k: int, experts: int) -> None:
    """Counts given with moe.tokens must describe this routing call: one per expert, each at most the tokens,
    summing to tokens*k."""
    if len(counts) != experts or sum(counts) != tokens * k or max(counts, default=0) > tokens:
        raise MemtraceError(
            f"--assume moe.tokens: {','.join(map(str, counts))} does not fit a routing of {tokens} tokens to "
            f"{k} of {experts} experts (one count per expert, each at most {tokens}, summing to {tokens * k})"
        )


def assignment(counts: tuple[int, ...], tokens: int, k: int) -> list[list[int]]:
    """Each token's k experts, distinct, with expert e picked by counts[e] tokens: the experts' slots are
    dealt round-robin over the tokens (a run of at most `tokens` slots never meets a token twice)."""
    slots = [e for e, n in enumerate(counts) for _ in range(n)]
    picks: list[list[int]] = [[] for _ in range(tokens)]
    for s, expert in enumerate(slots):
        picks[s % tokens].append(expert)
    return [p[:k] for p in picks]


Counts = list[float | int | bool]


def measured_values(steps: list[tuple[Counts, Counts, Counts]]) -> tuple[tuple[str, str], ...]:
    """The `--assume` pairs that replay a real run's counts and values, per step (`/` apart, one group when
    every step had the same): `nonzero`, `nms.keep` and `item`, per call in order (only the ops that ran)."""
    found = []
    for key, index in (("nonzero", 0), ("nms.keep", 1), ("item", 2)):
        groups = [",".join(_shown(v) for v in step[index]) for step in steps]
        if any(groups):
            found.append((key, groups[0] if len(set(groups)) == 1 else "/".join(groups)))
    return tuple(found)


def _shown(v: float | int | bool) -> str:
    return str(int(v)) if isinstance(v, bool) or float(v).is_integer() else repr(float(v))


def needed(pairs: tuple[tuple[str, str], ...], ops: set[str]) -> tuple[tuple[str, str], ...]:
    """Of measured pairs, those whose key decides one of the assumed ops (the rest changes nothing)."""
    keys = {KEY_OF_OP.get(op, "") for op in ops}
    return tuple((k, v) for k, v in pairs if k in keys)

"""Loops whose exit reads a value meta tensors do not have: continued to their own bound, counted, budgeted.

An unknown bool read inside a loop (`while not done:`, `if (tok == eos).all(): break`, Hugging Face's
`while self._has_unfinished_sequences(...)`) takes the value that keeps the loop going, as the bytecode of
the frame that reads it says (`bytecode.py`, a helper's constant returns followed into its caller up to two
levels): the loop then ends where its own bound ends it (`range(max_new_tokens)`, a length check).
`--assume decode.tokens=N` makes the N-th read of a loop's exit leave it (a loop with no bound of its own).
Every read of a loop's exit that the policy decides (by this rule or by `item` values) is counted per run
of the loop; past `LOOP_BUDGET` reads a one-line error names the loop, the budget and `decode.tokens`, so
no simulation runs away. The report lists each loop with the reads it continued.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from ..core.assume import LOOP_BUDGET, Policy, decode_tokens
from ..core.errors import MemtraceError
from ..core.records import Assumption
from ..meta.user_frame import is_user, place, user_frame_object
from .bytecode import Continues, continuing, in_loop, returned

_FOLLOWED = 2  # helper levels followed into their callers
OP = "loop exit"


@dataclass(frozen=True)
class Site:
    """Where a bool is read: the loop it decides (`value` continues it; None where the bytecode does not
    tell which), named `file:line`, and the key of this run of the loop."""

    value: bool | None
    name: str
    key: tuple[int, int, int]


def read_site() -> Site | None:
    """The loop around the user code reading a bool now, or None when it is read outside any loop."""
    frame = user_frame_object(sys._getframe(1))
    if frame is None:
        return None
    try:
        return _site(frame)
    finally:
        del frame  # a frame keeps its locals alive: hold none


def _site(frame: FrameType) -> Site | None:
    found = continuing(frame.f_code, frame.f_lasti)
    if found is not None:
        return _named(frame, found.value, found)
    value = _through_callers(frame, _FOLLOWED)
    if value is not None:
        return value
    loop = in_loop(frame.f_code, frame.f_lasti)
    if loop is None:
        return None
    return Site(None, place(frame.f_code.co_filename, loop.line), (id(frame), id(frame.f_code), loop.head))


def _named(frame: FrameType, value: bool, found: Continues) -> Site:
    name = place(frame.f_code.co_filename, found.loop.line)
    return Site(value, name, (id(frame), id(frame.f_code), found.loop.head))


def _through_callers(frame: FrameType, levels: int) -> Site | None:
    """A helper returning one constant per value of the bool: the caller's loop decides, the value that
    makes the helper return what continues it."""
    returns = returned(frame.f_code, frame.f_lasti)
    caller = frame.f_back
    if returns is None or caller is None or levels == 0 or not is_user(caller):
        return None
    found = continuing(caller.f_code, caller.f_lasti)
    if found is not None:
        chosen = [v for v, r in returns.items() if bool(r) == found.value]
        return _named(caller, chosen[0], found) if len(chosen) == 1 else None
    above = _through_callers(caller, levels - 1)
    if above is None or above.value is None:
        return None
    chosen = [v for v, r in returns.items() if bool(r) == above.value]
    return Site(chosen[0], above.name, above.key) if len(chosen) == 1 else None


class Loops:
    """The reads of loops' exits decided in a simulation, per run of each loop, and the budget."""

    def __init__(self, policy: Policy, step: Callable[[], int]) -> None:
        self.policy, self.step = policy, step
        self.reads: dict[
            tuple[int, tuple[int, int, int]], tuple[int, int]
        ] = {}  # loop run -> (serial, reads)
        self.runs: dict[str, dict[int, tuple[int, int, str]]] = {}  # name -> serial -> (step, continued, how)
        self.serials = 0

    def decide(self, site: Site) -> bool:
        """The value of a read of `site`'s exit by the loop rule: it continues, but at the N-th read by
        decode.tokens=N."""
        assert site.value is not None
        serial, reads = self.count(site)
        tokens, source = self.policy.value("decode.tokens")
        if source == "--assume" and reads >= decode_tokens(tokens):
            self.runs.setdefault(site.name, {})[serial] = (self.step(), reads - 1, f"decode.tokens={tokens}")
            self.reads.pop((self.step(), site.key), None)  # the next run of this loop counts anew
            return not site.value
        self.runs.setdefault(site.name, {})[serial] = (self.step(), reads, "")
        return site.value

    def count(self, site: Site) -> tuple[int, int]:
        """One more read of the loop's exit in this run of it (the run's serial number, the reads so far);
        past the budget, a one-line error."""
        run = (self.step(), site.key)
        if run not in self.reads:
            self.serials += 1
        serial, reads = self.reads.get(run, (self.serials, 0))
        self.reads[run] = (serial, reads + 1)
        tokens, source = self.policy.value("decode.tokens")
        budget = max(LOOP_BUDGET, decode_tokens(tokens)) if source == "--assume" else LOOP_BUDGET
        if reads + 1 > budget:
            item = self.policy.value("item")
            driver = f"--assume item={item[0]}" if item[1] == "--assume" else "the loop rule"
            raise MemtraceError(
                f"{site.name}: this loop's exit was read {budget:,} times in one run without ending it "
                f"({driver} keeps it going), the simulation's budget of {budget:,} reads of one loop; "
                "give its count with --assume decode.tokens=N (its exit read N times, leaving at the N-th)"
            )
        return serial, reads + 1

    def assumptions(self) -> list[Assumption]:
        """One row per loop: the reads it continued in its last run (of the last step)."""
        rows = []
        for name, runs in self.runs.items():
            last = max(step for step, _, _ in runs.values())
            mine = [r for r in runs.values() if r[0] == last]
            _, continued, how = mine[-1]
            value = f"continued {continued} times, " + (f"then left ({how})" if how else "to its own end")
            if len(mine) > 1:
                value += f" (the last of its {len(mine)} runs in the step)"
            rows.append(Assumption(OP, name, value, "--assume" if how else "default"))
        return rows

"""Which value of a bool keeps a loop going, read from the bytecode of the code that asks (pure: no torch).

A data-dependent bool (`if t:`, `while t:`, `bool(t)`, `t.item()` of a bool) is read by a Python frame
suspended at the instruction that reads it. From there the reader finds the jump that consumes the value
(through `TO_BOOL`, `UNARY_NOT`, the `CALL` of `bool()`/`.item()`), the innermost loop around it (a backward
jump and its target), and follows each branch: a branch that reaches the loop's back-edge or head continues
the loop, one that jumps past its end, returns or raises leaves it. Where one branch always leaves and the
other can continue, the value of the latter continues the loop. A helper that returns constants from its
branches (`if finished: return False; return True`, Hugging Face's `_has_unfinished_sequences`) is followed
into its caller. CPython 3.10 to 3.13 opcode names; where the bytecode cannot tell, the answer is None.
"""

from __future__ import annotations

import dis
import functools
from dataclasses import dataclass
from types import CodeType

_UNCONDITIONAL = {"JUMP_FORWARD", "JUMP_BACKWARD", "JUMP_ABSOLUTE", "JUMP", "JUMP_NO_INTERRUPT"}
_UNCONDITIONAL |= {"JUMP_BACKWARD_NO_INTERRUPT"}
_RETURNS = {"RETURN_VALUE", "RETURN_CONST"}
_ENDS = _RETURNS | {"RAISE_VARARGS", "RERAISE"}
_PASS_THROUGH = {"TO_BOOL", "NOT_TAKEN", "CACHE", "PRECALL", "EXTENDED_ARG", "NOP"}
_CALLS = {"CALL", "CALL_FUNCTION", "CALL_METHOD", "CALL_KW", "CALL_FUNCTION_KW"}
_MAX_STEPS = 4096  # instructions followed from one branch before giving up


@dataclass(frozen=True)
class Loop:
    """A loop of a code object: its head (the back-edge's target) and its last back-edge, as offsets."""

    head: int
    end: int
    line: int  # the first line of the loop's instructions: the `for`/`while` line


@dataclass(frozen=True)
class Continues:
    """The value of the read bool that keeps `loop` going."""

    value: bool
    loop: Loop


@dataclass(frozen=True)
class _Code:
    instructions: tuple[dis.Instruction, ...]
    index: dict[int, int]  # offset -> position in instructions
    loops: tuple[Loop, ...]


def _jump_names() -> set[int]:
    found = set(getattr(dis, "hasjump", ())) | set(dis.hasjrel) | set(dis.hasjabs)
    return found


_JUMPS = _jump_names()


@functools.lru_cache(maxsize=512)
def _code(code: CodeType) -> _Code:
    instructions = tuple(dis.get_instructions(code))
    index = {ins.offset: i for i, ins in enumerate(instructions)}
    ends: dict[int, int] = {}
    for ins in instructions:
        if ins.opcode in _JUMPS and isinstance(ins.argval, int) and ins.argval <= ins.offset:
            ends[ins.argval] = max(ends.get(ins.argval, ins.offset), ins.offset)
    loops = []
    for head, end in ends.items():
        lines = [n for i in instructions if head <= i.offset <= end and (n := _line(i)) is not None]
        loops.append(Loop(head, end, min(lines) if lines else code.co_firstlineno))
    return _Code(instructions, index, tuple(loops))


def _line(ins: dis.Instruction) -> int | None:
    """The instruction's line: `positions` on 3.11+, `starts_line` (where it starts one) on 3.10."""
    positions = getattr(ins, "positions", None)
    if positions is not None:
        line: int | None = positions.lineno
        return line
    start = ins.starts_line
    return start if isinstance(start, int) and not isinstance(start, bool) else None


def _consumer(code: _Code, offset: int) -> tuple[dis.Instruction, bool] | None:
    """The instruction that consumes the bool read at `offset` and whether it sees it negated: the read
    itself when it is a jump, else the first after it, past `TO_BOOL` and `UNARY_NOT`."""
    at = code.index.get(offset)
    if at is None:
        return None
    negated, ins = False, code.instructions[at]
    if ins.opname in _CALLS or ins.opname in ("TO_BOOL", "UNARY_NOT"):
        negated = ins.opname == "UNARY_NOT"
        at += 1
    while at < len(code.instructions):
        ins = code.instructions[at]
        if ins.opname == "UNARY_NOT":
            negated = not negated
        elif ins.opname not in _PASS_THROUGH:
            return ins, negated
        at += 1
    return None


def branches(code: _Code, jump: dis.Instruction) -> dict[bool, int] | None:
    """The offsets each value of the bool goes to at a conditional jump, else None."""
    name = jump.opname
    if jump.opcode not in _JUMPS or not ("IF_TRUE" in name or "IF_FALSE" in name) or "NONE" in name:
        return None
    at = code.index[jump.offset]
    following = code.instructions[at + 1].offset if at + 1 < len(code.instructions) else -1
    jumps_on = "IF_TRUE" in name
    return {jumps_on: int(jump.argval), not jumps_on: following}


def _successors(code: _Code, ins: dis.Instruction) -> list[int]:
    at = code.index[ins.offset]
    following = [code.instructions[at + 1].offset] if at + 1 < len(code.instructions) else []
    if ins.opname in _ENDS:
        return []
    if ins.opname in _UNCONDITIONAL:
        return [int(ins.argval)]
    if ins.opcode in _JUMPS:
        return [int(ins.argval), *following]
    return following


def _outcomes(code: _Code, start: int, loop: Loop) -> set[str]:
    """Where the paths from `start` go: `continue` (the loop's head), `leave` (past its end, a return or
    a raise)."""
    found: set[str] = set()
    todo, seen, steps = [start], set(), 0
    while todo and steps < _MAX_STEPS:
        offset = todo.pop()
        if offset == loop.head:
            found.add("continue")
            continue
        if offset in seen:
            continue
        seen.add(offset)
        steps += 1
        if not loop.head <= offset <= loop.end or offset not in code.index:
            found.add("leave")
            continue
        ins = code.instructions[code.index[offset]]
        if ins.opname in _ENDS:
            found.add("leave")
        todo.extend(_successors(code, ins))
    return found if not todo else found | {"unknown"}


def _chosen(outcomes: dict[bool, set[str]]) -> bool | None:
    for value in (False, True):
        mine, other = outcomes[value], outcomes[not value]
        if "unknown" in mine or "unknown" in other:
            return None
        if "continue" in mine and other == {"leave"}:
            return value
        if mine == {"continue"} and "leave" in other:
            return value
    return None


def _loop_of(code: _Code, offset: int, targets: dict[bool, int]) -> Loop | None:
    """The loop a jump at `offset` decides: one whose head it jumps or falls to from outside (a `while`'s
    first check), else the innermost around it."""
    for loop in code.loops:
        if not loop.head <= offset <= loop.end and loop.head in targets.values():
            return loop
    around = [lp for lp in code.loops if lp.head <= offset <= lp.end]
    return min(around, key=lambda lp: lp.end - lp.head) if around else None


def in_loop(code: CodeType, offset: int) -> Loop | None:
    """The innermost loop of `code` around the instruction at `offset`, if any."""
    around = [lp for lp in _code(code).loops if lp.head <= offset <= lp.end]
    return min(around, key=lambda lp: lp.end - lp.head) if around else None


def continuing(code: CodeType, offset: int) -> Continues | None:
    """The value of the bool read at `offset` in `code` that keeps its loop going, or None where the
    bytecode does not tell (no loop, both branches alike, or the value not consumed by a jump)."""
    parsed = _code(code)
    consumer = _consumer(parsed, offset)
    if consumer is None:
        return None
    jump, negated = consumer
    targets = branches(parsed, jump)
    loop = _loop_of(parsed, jump.offset, targets) if targets else None
    if targets is None or loop is None:
        return None
    value = _chosen({v: _outcomes(parsed, t, loop) for v, t in targets.items()})
    return None if value is None else Continues(value != negated, loop)


def returned(code: CodeType, offset: int) -> dict[bool, object] | None:
    """For a bool read at `offset` whose branches each return one constant (a helper such as `if done:
    return False; return True`), the constant each value returns; else None."""
    parsed = _code(code)
    consumer = _consumer(parsed, offset)
    targets = branches(parsed, consumer[0]) if consumer else None
    if consumer is None or targets is None:
        return None
    found = {}
    for value, target in targets.items():
        constants = _constants(parsed, target)
        if constants is None or len(constants) != 1:
            return None
        found[value != consumer[1]] = constants.pop()
    return found if found[True] != found[False] else None


def _constants(code: _Code, start: int) -> set[object] | None:
    """The constants the paths from `start` return, or None where one returns anything else or loops."""
    found: set[object] = set()
    todo, seen = [start], set[int]()
    while todo:
        offset = todo.pop()
        if offset in seen or offset not in code.index or len(seen) > _MAX_STEPS:
            return None
        seen.add(offset)
        at = code.index[offset]
        ins = code.instructions[at]
        if ins.opname == "RETURN_CONST":
            found.add(ins.argval)
        elif ins.opname == "RETURN_VALUE":
            before = code.instructions[at - 1] if at else None
            if before is None or before.opname != "LOAD_CONST":
                return None
            found.add(before.argval)
        elif ins.opname in _ENDS:
            return None
        else:
            successors = _successors(code, ins)
            if any(s <= offset for s in successors):
                return None
            todo.extend(successors)
    return found

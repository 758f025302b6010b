"""Loops whose exit reads a value meta tensors do not have (engine/bytecode.py, engine/loops.py): the value
that continues the loop read from the bytecode, `decode.tokens`, the iteration budget; and a gpt-fast-style
generation (Llama 3.1's RoPE scaling loops over values computed from constants) held against the CPU
allocator."""

from __future__ import annotations

import textwrap
from pathlib import Path
from types import CodeType

import pytest

from memtrace.tracer.core.assume import LOOP_BUDGET, item_values, parse_assume
from memtrace.tracer.core.errors import MemtraceError
from memtrace.tracer.core.records import Result
from memtrace.tracer.core.specs import parse_input
from memtrace.tracer.engine import bytecode
from memtrace.tracer.real.measure import measure_request
from memtrace.tracer.simulate import Config, Request, run

MODELS = Path(__file__).resolve().parents[1] / "benchmarks" / "models"
GPTFAST = f"{MODELS / 'gptfast.py'}:build"
STEPS = MODELS / "gptfast_generate.py"


def _reads(code: CodeType) -> list[int]:
    """The offsets where a bool is read: calls and conditional jumps."""
    import dis

    return [i.offset for i in dis.get_instructions(code) if i.opname.startswith("CALL") or "IF_" in i.opname]


def _decided(fn: object) -> set[bool | None]:
    code: CodeType = fn.__code__  # type: ignore[attr-defined]
    found = {bytecode.continuing(code, offset) for offset in _reads(code)}
    return {c.value if c else None for c in found} - {None} or {None}


def _break_on_true(x: object) -> None:
    while True:
        if bool(x):
            break


def _for_return_on_true(x: object, n: int) -> int:
    for i in range(n):
        if x:
            return i
    return n


def _while_not(x: object) -> None:
    while not x:
        pass


def _while(x: object) -> None:
    while x:
        pass


def _both_continue(x: object, n: int) -> int:
    k = 0
    for _ in range(n):
        if x:
            k += 1
        else:
            k -= 1
    return k


def _no_loop(x: object) -> int:
    return 1 if x else 0


def test_the_value_that_continues_a_loop_comes_from_the_bytecode() -> None:
    assert _decided(_break_on_true) == {False}
    assert _decided(_for_return_on_true) == {False}
    assert _decided(_while_not) == {False}
    assert _decided(_while) == {True}
    assert _decided(_both_continue) == {None}  # both branches go on: the bytecode cannot tell
    assert _decided(_no_loop) == {None}


def _finished_helper(done: object) -> bool:
    if done:  # noqa: SIM103 (the shape of Hugging Face's _has_unfinished_sequences)
        return False
    return True


def test_a_helper_returning_constants_is_followed_to_its_caller() -> None:
    code = _finished_helper.__code__
    jump = next(o for o in _reads(code))
    assert bytecode.returned(code, jump) == {True: False, False: True}


def test_item_takes_true_and_false_and_decode_tokens_is_a_count() -> None:
    assert item_values("true,false,1") == (1.0, 0.0, 1.0)
    assert parse_assume("decode.tokens=64") == ("decode.tokens", "64")
    with pytest.raises(MemtraceError, match=r"decode\.tokens=0"):
        parse_assume("decode.tokens=0")


def _gptfast(step: str, *assume: tuple[str, str]) -> Request:
    config = Config(mode="infer", device="cpu", step=f"{STEPS}:{step}", assume=assume)
    return Request(GPTFAST, (parse_input("1x16:int64"),), (), config)


def _loop_rows(result: Result) -> list[tuple[str, str, str]]:
    return [(a.module, a.value, a.source) for a in result.assumptions if a.op == "loop exit"]


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


@pytest.mark.parametrize("step", ["step", "step_while"])
def test_gptfast_generation_matches_the_cpu_allocator(step: str) -> None:
    """The caches set up inside the step (RoPE scaling's loop over a constant tensor runs as for real), a
    prefill and 7 decode forwards; `step_while` leaves its `while` at an EOS check the loop rule continues
    until the length bound ends it, as the real run does (its EOS is no token)."""
    simulated = run(_gptfast(step))
    measured = measure_request(_gptfast(step))
    assert abs(simulated.peak.bytes - measured.peak) <= 64  # +36 B of 681,600 here
    rows = _loop_rows(simulated)
    if step == "step_while":
        ((where, value, source),) = rows
        assert where.endswith(f"gptfast_generate.py:{_line_of(STEPS, '    while pos < seq.shape[1]:')}")
        assert value == "continued 7 times, to its own end" and source == "default"
    else:
        assert rows == []


def test_decode_tokens_sets_the_count_of_a_loop_with_no_bound() -> None:
    result = run(_gptfast("step_until_eos", ("decode.tokens", "5")))
    ((where, value, source),) = _loop_rows(result)
    assert where.endswith(f"gptfast_generate.py:{_line_of(STEPS, '    while True:')}")
    assert value == "continued 4 times, then left (decode.tokens=5)" and source == "--assume"


SPIN = textwrap.dedent(
    """
    import torch

    def step(model, inputs, optimizer):
        x = model(inputs[0])
        while True:
            x = x + 1
            if (x < 0).all():
                break
    """
)


def test_a_loop_driven_by_assumed_values_stops_at_the_budget(tmp_path: Path) -> None:
    path = tmp_path / "spin.py"
    path.write_text(SPIN)
    config = Config(mode="infer", device="cpu", step=f"{path}:step")
    request = Request(
        f"{MODELS / 'seed_cnn.py'}:build", (parse_input("1x3x32x32"),), (("h", 32), ("w", 32)), config
    )
    with pytest.raises(MemtraceError) as error:
        run(request)
    message = str(error.value)
    assert f"spin.py:{_line_of(path, '    while True:')}" in message
    assert f"{LOOP_BUDGET:,}" in message and "decode.tokens" in message and "\n" not in message


HF_STEP = textwrap.dedent(
    """
    def step(model, inputs, optimizer):
        return model.generate(inputs["input_ids"], max_new_tokens=8, do_sample=False, use_cache=True)
    """
)


def test_hf_generate_with_item_zero_runs_to_its_bound(tmp_path: Path) -> None:
    """Hugging Face's own loop (`while self._has_unfinished_sequences(...)`) under `--assume item=0`: its stop
    is known from its own max-length criterion (engine/generation.py), so no assumed value drives it and it
    runs its 8 tokens, not into the budget."""
    pytest.importorskip("transformers")
    path = tmp_path / "hfgen.py"
    path.write_text(HF_STEP)
    config = Config(mode="infer", device="cpu", step=f"{path}:step", assume=(("item", "0"),))
    request = Request(
        f"{MODELS / 'hf_llama.py'}:build",
        (parse_input("input_ids=1x8:int64"),),
        (
            ("layers", 1),
            ("hidden", 64),
            ("heads", 4),
            ("kv_heads", 2),
            ("intermediate", 128),
            ("vocab", 256),
            ("positions", 128),
        ),
        config,
    )
    result = run(request)
    assert any("the prefill and 7 decode steps" in n for n in result.notes)
    assert not _loop_rows(result)

"""memtrace's pytest plugin (entry point `pytest11`): a GPU-memory limit on a model's training step, checked
by simulation, as pytest-memray's `limit_memory` checks a test's host memory.

    @pytest.mark.memtrace_limit("12 GiB", model="models.py:build", input="8x3x224x224", gpu="rtx4070")
    def test_fits(): ...

After the test body passes, the marked model's step is simulated (`memtrace.simulate`; the limit is held
against the allocated peak over the simulated steps, what `torch.cuda.max_memory_allocated()` reports from
a reset) and, where CUDA is present and the step targets it, measured for real too. The test fails when
either is over the limit, with the breakdown by category and the dominant layer. `memtrace_peak` is a
fixture: a callable returning the simulated `Result` (of the marker's model when called without one).

pytest loads this module in every run: torch and the engine are imported only when a marked test runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from memtrace.tracer.core.records import Result
    from memtrace.tracer.simulate import Request

MARKER = (
    "memtrace_limit(limit, *, model, input=(), gpu=None, **options): fail when the simulated training step "
    "of model (FILE.py:FUNC or a builder) needs more than limit (12 GiB, 24GB, or an int of bytes); options "
    "are memtrace's: mode, optimizer, device, loss, amp, dtype, checkpoint, accumulate, args, headroom, ..."
)
_RECIPE = ("amp", "dtype", "checkpoint", "accumulate")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER)


@pytest.hookimpl(trylast=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    """After pytest's own implementation ran the body: a failing body raised there, and its failure is the
    one reported."""
    marker = item.get_closest_marker("memtrace_limit")
    if marker is not None:
        check_limit(*marker.args, **marker.kwargs)


@pytest.fixture()
def memtrace_peak(request: pytest.FixtureRequest) -> Callable[..., Result]:
    """`memtrace_peak(model=None, input=None, **options)`: the simulated step's Result; the marker's model,
    inputs and options fill what is not given."""
    marker = request.node.get_closest_marker("memtrace_limit")
    defaults: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}

    def peak(model: Any = None, input: Any = None, **options: Any) -> Result:
        merged = {**defaults, **options}
        if model is not None:
            merged["model"] = model
        if input is not None:
            merged["input"] = input
        if "model" not in merged:
            pytest.fail("memtrace_peak: give model= (or mark the test with memtrace_limit)", pytrace=False)
        from memtrace.tracer.simulate import run

        return run(make_request(**merged))

    return peak


def make_request(model: Any, input: Any = (), gpu: Any = None, **options: Any) -> Request:
    """The engine request of the marker's keywords, named as `memtrace`'s flags are (`simulate.request`)."""
    from memtrace.tracer.simulate import request

    try:
        return request(model, input, gpu=gpu, **options)
    except TypeError as exc:
        pytest.fail(f"memtrace_limit: {exc}", pytrace=False)


def check_limit(limit: Any = None, **kwargs: Any) -> None:
    """Fail the test (no traceback) when the simulated, or on CUDA the measured, peak exceeds the limit, or
    when the step does not fit the `gpu=` given."""
    from memtrace.tracer.core.errors import MemtraceError
    from memtrace.tracer.core.records import DOES_NOT_FIT
    from memtrace.tracer.core.specs import parse_size
    from memtrace.tracer.simulate import run

    if limit is None and kwargs.get("gpu") is None:
        pytest.fail('memtrace_limit: give a limit ("12 GiB") or gpu=', pytrace=False)
    if "model" not in kwargs:
        pytest.fail("memtrace_limit: give model= (FILE.py:FUNC or a builder)", pytrace=False)
    try:
        limit_bytes = parse_size(limit, option="limit") if isinstance(limit, str) else limit
        request = make_request(**kwargs)
        result = run(request)
    except MemtraceError as exc:
        pytest.fail(f"memtrace_limit: {exc.one_line()}", pytrace=False)
    if limit_bytes is not None and result.all_steps_peak_bytes > limit_bytes:
        pytest.fail(failure(result, result.all_steps_peak_bytes, limit_bytes, "simulated"), pytrace=False)
    if result.verdict is not None and result.verdict.status == DOES_NOT_FIT:  # borderline passes, as before
        pytest.fail(
            failure(result, result.fit_bytes, result.verdict.budget_bytes, "simulated"), pytrace=False
        )
    measured = _measured_on_cuda(request)
    if measured is not None and limit_bytes is not None and measured > limit_bytes:
        pytest.fail(failure(result, measured, limit_bytes, "measured"), pytrace=False)


def _measured_on_cuda(request: Request) -> int | None:
    """`torch.cuda.max_memory_allocated()` of the real steps, where CUDA is here and the step targets it."""
    import torch

    if request.config.device != "cuda" or not torch.cuda.is_available():
        return None
    if getattr(request.builder, "__name__", "") == "copy":  # an nn.Module given as is: no real build
        return None
    from memtrace.tracer.real.measure import CudaMeasured, measure_request

    got = measure_request(request)
    return got.allocated_peak if isinstance(got, CudaMeasured) else None


def failure(result: Result, peak: int, limit: int, how: str) -> str:
    """The failure message: by how much, what is live at the peak by category, and the dominant layer."""
    from io import StringIO

    from rich.console import Console

    from memtrace.tracer.core.specs import human_bytes
    from memtrace.tracer.outputs.report import category_table, dominant_line

    out = StringIO()
    console = Console(file=out, width=110, no_color=True, force_terminal=False)
    console.print(category_table(result))
    console.print(dominant_line(result))
    head = (
        f"memtrace_limit: the {how} step of {result.model.name} on {result.device} needs "
        f"{peak:,} B = {human_bytes(peak)}, over the limit of {limit:,} B = {human_bytes(limit)} "
        f"by {peak - limit:,} B"
    )
    return f"{head}\n{out.getvalue().rstrip()}"

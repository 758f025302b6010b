"""`memtrace bench`, the running half: load a suite, simulate each case, measure it for real, key the host.

Each case is simulated with `simulate.run` and, unless told not to, measured with `measure.measure_request`
on the same device: the CUDA caching allocator's peaks on a GPU, the CPU allocator's peak otherwise. Asked
for `--device cuda` where there is no GPU, the case is simulated only (measured null, no error gate).
"""

from __future__ import annotations

import importlib
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from memtrace import __version__

from ..core.errors import MemtraceError
from ..core.records import Result
from ..simulate import Request, request
from .bench import BenchRun, Case, CaseResult, Figures, Machine

DEFAULT_SUITE = Path("benchmarks") / "suite.py"  # in the current directory, as in this repository


def load_suite(path: Path) -> tuple[Case, ...]:
    """The `SUITE` tuple of Case a suite file defines."""
    from ..engine.loader import load_object

    if not path.is_file():
        raise MemtraceError(f"--suite {path}: file not found (give --suite FILE)")
    suite = load_object(f"{path}:SUITE", "--suite")
    if not isinstance(suite, (tuple, list)) or not all(isinstance(c, Case) for c in suite):
        raise MemtraceError(f"--suite {path}: SUITE must be a tuple of memtrace.tracer.real.bench.Case")
    names = [c.name for c in suite]
    if len(set(names)) != len(names):
        raise MemtraceError(f"--suite {path}: two cases share a name")
    return tuple(suite)


def cuda_here() -> bool:
    return torch.cuda.is_available()


def aimed_here(device: str, measure: bool) -> bool:
    """Whether the run measures on this machine's GPU, and so aims its predictions at it (as verify does)."""
    return device == "cuda" and measure and cuda_here()


def machine(device: str, measuring: bool, aimed: bool = False) -> Machine:
    """The keys the run's figures depend on (docs/ci.md): a CPU prediction on the host's kernels; a CUDA
    prediction on the torch version and the GPU it is aimed at (the default target unless it was aimed at
    this machine's); a measurement on the hardware."""
    from ..devices.cpu import isa

    host = {
        "platform": platform.machine(),
        "cpu_isa": isa.onednn_isa() or "none",
        "aten_capability": isa.aten_capability(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    cpu_key = " ".join(f"{k}={v}" for k, v in host.items())
    gpu = torch.cuda.get_device_name() if device == "cuda" and cuda_here() else None
    prediction = cpu_key if device == "cpu" else f"torch={torch.__version__} target={_target(aimed)}"
    measured: str | None = None
    if measuring and device == "cpu":
        measured = cpu_key
    elif measuring and gpu is not None:
        measured = f"gpu={gpu} torch={torch.__version__} cuda={torch.version.cuda}"
    return Machine(prediction, measured, {**host, "gpu": gpu})


def _target(aimed: bool) -> str:
    if not aimed:
        return "default"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return "sm{}{}".format(*torch.cuda.get_device_capability()) + f",cudnn={cudnn},cuda={torch.version.cuda}"


def request_for(case: Case, device: str) -> Request:
    """The engine request of a case, as `memtrace` would build it from the same flags."""
    return request(
        case.builder,
        tuple(case.inputs),
        args=case.args,
        mode=case.mode,
        optimizer=case.optimizer,
        device=device,
        amp=case.amp,
        dtype=case.dtype,
        checkpoint=case.checkpoint,
        accumulate=case.accumulate,
        loss=case.loss,
    )


def missing(case: Case) -> str | None:
    """Why a module the case needs is not usable here (absent, or failing to import: a torchvision built for
    another torch stops at `torchvision::nms`), or None."""
    from ..core.errors import first_line

    for name in case.needs:
        try:
            importlib.import_module(name)
        except ImportError:
            return f"needs {name} (pip install 'torch-memtrace[bench]')"
        except Exception as exc:  # an import that raises something else is as unusable
            return f"needs {name}, which does not import here: {first_line(exc)}"
    return None


def run_case(case: Case, device: str, measure: bool) -> CaseResult:
    """Simulate the case, then measure it (unless `measure` is False or there is no GPU for cuda)."""
    from ..simulate import run

    lacking = missing(case)
    if lacking is not None:
        return CaseResult(case.name, "skipped", lacking)
    try:
        request = request_for(case, device)
        if aimed_here(device, measure):
            from .measure import on_this_gpu

            request = on_this_gpu(request)
        t0 = time.perf_counter()
        result = run(request)
        sim = time.perf_counter() - t0
    except MemtraceError as exc:
        return CaseResult(case.name, "failed", f"simulation: {exc.one_line()}")
    row = CaseResult(
        case.name,
        "ok",
        predicted=predicted(result),
        by_category={k.value: v for k, v in result.peak.by_category.items()},
        dominant=_dominant(result),
        simulate_seconds=round(sim, 3),
        error_gated=kernels_modelled(result),
    )
    if not measure or (device == "cuda" and not cuda_here()):
        return row
    return _measured(row, request)


def _measured(row: CaseResult, request: Request) -> CaseResult:
    from dataclasses import replace

    from .measure import CudaMeasured, measure_request

    if request.config.device == "cuda":
        _fresh_gpu()
    t0 = time.perf_counter()
    try:
        got = measure_request(request)
    except MemtraceError as exc:
        return replace(row, status="failed", reason=f"measurement: {exc.one_line()}")
    real = round(time.perf_counter() - t0, 3)
    if isinstance(got, CudaMeasured):
        return replace(row, measured=Figures(got.allocated_peak, got.reserved_peak), real_seconds=real)
    return replace(row, measured=Figures(got.peak), real_seconds=real)


def _fresh_gpu() -> None:
    """As a new process finds the GPU: the earlier cases' tensors freed, cuBLAS's workspaces (kept per handle
    and stream for the process's life) released, the caching allocator's segments returned."""
    import gc

    gc.collect()
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is not None:
        clear()
    torch.cuda.empty_cache()


def predicted(result: Result) -> Figures:
    """On cuda what `max_memory_allocated`/`max_memory_reserved` report over the steps from a reset (the
    figures `memtrace verify` holds against a GPU); on cpu the steady-state step's peak (the CPU
    reference's)."""
    if result.cuda is not None:
        return Figures(result.all_steps_peak_bytes, result.cuda.reserved_peak_bytes)
    return Figures(result.peak_bytes)


def _dominant(result: Result) -> str:
    if not result.top_layers:
        return ""
    top = result.top_layers[0]
    return f"{top.module or '(model)'} ({top.type})"


def kernels_modelled(result: Result) -> bool:
    """False for a CPU case with convolutions on a host whose oneDNN convolution kernels memtrace does not
    model (below AVX2, or not x86-64: its scratchpads are not predicted there)."""
    if result.device != "cpu":
        return True
    from ..devices.cpu.conv import onednn_modelled

    has_conv = any(m.type.startswith(("Conv", "LazyConv")) for m in result.modules)
    return onednn_modelled() or not has_conv


def bench_run(rows: Sequence[CaseResult], device: str, measure: bool) -> BenchRun:
    """The run of these rows, with the keys of this host (measured: when any case was)."""
    measuring = measure and any(r.measured is not None for r in rows)
    return BenchRun(device, machine(device, measuring, aimed_here(device, measure)), tuple(rows), __version__)

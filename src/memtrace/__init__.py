"""memtrace: exact memory of a PyTorch training step, simulated on the meta device.

`memtrace.simulate(model_or_builder, inputs, ...)` is the engine's entry point (imported on first use, so
that `import memtrace` and `memtrace --help` stay light); see `memtrace.tracer.simulate.simulate`.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "simulate"]


def __getattr__(name: str) -> Any:
    if name == "simulate":
        from memtrace.tracer.simulate import simulate

        return simulate
    raise AttributeError(f"module 'memtrace' has no attribute {name!r}")

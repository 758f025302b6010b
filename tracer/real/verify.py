"""`memtrace verify`: the prediction held against the real step on this machine (pure: rows and errors).

Each row is one figure: on the CPU the step's peak against the CPU allocator; on CUDA what
`torch.cuda.max_memory_allocated()`, `max_memory_reserved()` and the requested-bytes peak say after the
simulated number of steps from reset peak statistics (the prediction's figure over the same steps).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ..core.records import Result


@dataclass(frozen=True)
class Check:
    figure: str
    predicted: int
    measured: int

    @property
    def error(self) -> float:
        """(predicted - measured) / measured; 0 when both are 0."""
        if self.measured == 0:
            return 0.0 if self.predicted == 0 else float("inf")
        return (self.predicted - self.measured) / self.measured

    def to_json(self) -> dict[str, Any]:
        """The check with its error (null when the measured figure is 0 and the prediction is not)."""
        return {**asdict(self), "error": self.error if math.isfinite(self.error) else None}


def cpu_checks(result: Result, measured_peak: int) -> tuple[Check, ...]:
    return (Check("peak", result.peak_bytes, measured_peak),)


def cuda_checks(result: Result, allocated: int, reserved: int, requested: int) -> tuple[Check, ...]:
    """Peaks over all the steps run: the first step's (optimizer state appears there) or the steady state."""
    rows = [Check("allocated", result.all_steps_peak_bytes, allocated)]
    if result.cuda is not None:
        rows.append(Check("reserved", result.cuda.reserved_peak_bytes, reserved))
        if requested:
            rows.append(Check("requested", result.cuda.requested_peak_bytes, requested))
    return tuple(rows)


def failing(checks: tuple[Check, ...], tolerance: float) -> list[Check]:
    """The figures whose error exceeds the tolerance (a fraction: 0.01 is 1%)."""
    return [c for c in checks if abs(c.error) > tolerance]

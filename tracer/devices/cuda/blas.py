"""CUDA matrix multiplies: `prepare_matrix_for_cublas` clones operands cuBLAS cannot read in place
(devices/shared.py)."""

from __future__ import annotations

from typing import Any

from memtrace.tracer.devices import Workspace, rule
from memtrace.tracer.devices.shared import operand_copies


@rule("cuda", "aten.mm.default")
def mm(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    return operand_copies(args[0], args[1])


@rule("cuda", "aten.addmm.default")
def addmm(args: Any, kwargs: Any, out: Any) -> Workspace | None:
    return operand_copies(args[1], args[2])

"""torchao on meta: what runs, and one line for what does not.

- int8 weight-only (`Int8WeightOnlyConfig`): `Int8Tensor`, a wrapper subclass whose int8 data and scales are
  its inner tensors (the recorder counts those: `engine/recorder.py` `plain_tensors`); its `F.linear`
  override is reached through memtrace's own `F.linear` patch (`meta/compat_nn.py`).
- float8 training (`convert_to_float8_training`): `Float8Linear` with dynamic tensor-wise scaling; its
  `_scaled_mm` on the CPU is ATen's emulated kernel (`devices/cpu/scaled_mm.py`).
- int4 weight-only (`Int4WeightOnlyConfig`) packs its weights with CUDA kernels (mslk, tinygemm) that have
  no meta or CPU implementation here: `unsupported` names it when the builder fails inside it.
"""

from __future__ import annotations

import traceback

from ..core.errors import first_line

# torchao's quantize_ handlers (torchao/quantization/quant_api.py) that memtrace cannot run, by name
UNSUPPORTED = {
    "_int4_weight_only_transform": (
        "torchao's int4 weight-only quantization (Int4WeightOnlyConfig) is not supported: its packed "
        "weights need torchao's CUDA kernels (mslk, tinygemm), which run neither on meta nor here"
    ),
}


def unsupported(exc: BaseException) -> str | None:
    """One line naming the torchao feature a builder failed in, with torchao's own reason; None otherwise."""
    for frame in traceback.extract_tb(exc.__traceback__):
        if "torchao" in frame.filename and frame.name in UNSUPPORTED:
            return f"{UNSUPPORTED[frame.name]} ({first_line(exc)})"
    return None

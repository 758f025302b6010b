"""torchvision's detection code, answered for the simulated device.

`torchvision.ops.batched_nms` picks its algorithm by the boxes' device: a loop over the classes (one `nms`
per class) when there are more than 4,000 box coordinates on the CPU or 20,000 elsewhere, else one `nms`
over boxes offset per class. Meta tensors are neither, so while simulating the boxes count as being on the
target device, and the step makes the calls (and allocations) the real one makes there. Loaded only if
torchvision is already imported by the user's builder.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

from ..core.registry import patch

VANILLA_ABOVE = {"cpu": 4000, "cuda": 20000}  # torchvision/ops/boxes.py: batched_nms


def _on_target(device: str, original: Callable[..., Any], boxes_module: Any) -> Callable[..., Any]:
    def batched_nms(boxes: Any, scores: Any, idxs: Any, iou_threshold: float) -> Any:
        if boxes.device.type != "meta":
            return original(boxes, scores, idxs, iou_threshold)
        if boxes.numel() > VANILLA_ABOVE[device]:
            return boxes_module._batched_nms_vanilla(boxes, scores, idxs, iou_threshold)
        return boxes_module._batched_nms_coordinate_trick(boxes, scores, idxs, iou_threshold)

    return batched_nms


@contextlib.contextmanager
def _batched_nms(device: str) -> Iterator[None]:
    boxes: Any = sys.modules.get("torchvision.ops.boxes")
    ops: Any = sys.modules.get("torchvision.ops")
    original = getattr(boxes, "batched_nms", None)
    paths = ("_batched_nms_vanilla", "_batched_nms_coordinate_trick")
    if original is None or not all(hasattr(boxes, p) for p in paths):
        yield
        return
    wrapped = _on_target(device, original, boxes)
    swapped = [m for m in (boxes, ops) if m is not None and getattr(m, "batched_nms", None) is original]
    for module in swapped:
        module.batched_nms = wrapped
    try:
        yield
    finally:
        for module in swapped:
            module.batched_nms = original


patch("cpu", "torchvision_batched_nms")(lambda: _batched_nms("cpu"))
patch("cuda", "torchvision_batched_nms")(lambda: _batched_nms("cuda"))

"""torchvision detection models (Faster/Mask R-CNN, RetinaNet), untrained, and their training step with
synthetic targets. Needs torchvision.

memtrace benchmarks/models/detection.py:build --arg name=fasterrcnn_resnet50_fpn --input 2x3x800x800 \
    --step benchmarks/models/detection.py:train_step
memtrace benchmarks/models/detection.py:build --arg name=maskrcnn_resnet50_fpn --input 1x3x1080x1920 \
    --mode infer --step benchmarks/models/detection.py:infer_step
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

BOXES = 3  # ground-truth objects per image


def build(name: str = "fasterrcnn_mobilenet_v3_large_fpn", classes: int = 91, **kwargs: Any) -> nn.Module:
    import torchvision

    return torchvision.models.get_model(  # type: ignore[no-any-return]
        name, weights=None, weights_backbone=None, num_classes=classes, **kwargs
    )


def targets(images: torch.Tensor, boxes: int = BOXES, masks: bool = False) -> list[dict[str, torch.Tensor]]:
    """`boxes` objects per image at fixed places (the same on every run), made on the CPU as a data loader
    does and moved to the images' device: boxes, labels and, with `masks`, a filled-box mask per object."""
    height, width = images.shape[-2:]
    found = []
    for i in range(images.shape[0]):
        rows = []
        for j in range(boxes):
            x0, y0 = (0.1 + 0.2 * j) * width, (0.15 + 0.1 * i + 0.2 * j) * height
            rows.append([x0, y0, x0 + 0.25 * width, y0 + 0.3 * height])
        box = torch.tensor(rows, dtype=torch.float32).clamp(min=0, max=float(max(height, width)))
        target = {"boxes": box, "labels": torch.arange(1, boxes + 1, dtype=torch.int64)}
        if masks:
            mask = torch.zeros(boxes, height, width, dtype=torch.uint8)
            for j, (x0, y0, x1, y1) in enumerate(box.round().long().tolist()):
                mask[j, y0:y1, x0:x1] = 1
            target["masks"] = mask
        found.append({k: v.to(images.device) for k, v in target.items()})
    return found


def train_step(model: nn.Module, inputs: tuple[torch.Tensor, ...], optimizer: torch.optim.Optimizer) -> None:
    """torchvision's reference training step: the model returns its losses, summed."""
    (images,) = inputs
    losses = model(
        list(images),
        targets(
            images,
            masks=hasattr(model.roi_heads, "mask_head") and model.roi_heads.mask_head is not None
            if hasattr(model, "roi_heads")
            else False,
        ),
    )
    loss = sum(losses.values())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def infer_step(model: nn.Module, inputs: tuple[torch.Tensor, ...], optimizer: Any) -> None:
    (images,) = inputs
    with torch.no_grad():
        model(list(images))

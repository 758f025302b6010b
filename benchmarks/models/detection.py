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


def build(
    name: str = "fasterrcnn_mobilenet_v3_large_fpn", classes: int | None = None, **kwargs: Any
) -> nn.Module:
    import torchvision

    if classes is not None:  # else the model's own default (91 COCO classes; 2 for Keypoint R-CNN)
        kwargs["num_classes"] = classes
    return torchvision.models.get_model(  # type: ignore[no-any-return]
        name, weights=None, weights_backbone=None, **kwargs
    )


def targets(
    images: torch.Tensor, boxes: int = BOXES, masks: bool = False, keypoints: int = 0
) -> list[dict[str, torch.Tensor]]:
    """`boxes` objects per image at fixed places (the same on every run), made on the CPU as a data loader
    does and moved to the images' device: boxes, labels and, with `masks`, a filled-box mask per object,
    with `keypoints`, that many visible keypoints on each box's diagonal."""
    height, width = images.shape[-2:]
    found = []
    for i in range(images.shape[0]):
        rows = []
        for j in range(boxes):
            x0, y0 = (0.1 + 0.2 * j) * width, (0.15 + 0.1 * i + 0.2 * j) * height
            rows.append([x0, y0, x0 + 0.25 * width, y0 + 0.3 * height])
        box = torch.tensor(rows, dtype=torch.float32).clamp(min=0, max=float(max(height, width)))
        target = {"boxes": box, "labels": torch.ones(boxes, dtype=torch.int64)}  # class 1: any model has it
        if masks:
            mask = torch.zeros(boxes, height, width, dtype=torch.uint8)
            for j, (x0, y0, x1, y1) in enumerate(box.round().long().tolist()):
                mask[j, y0:y1, x0:x1] = 1
            target["masks"] = mask
        if keypoints:
            t = torch.linspace(0.1, 0.9, keypoints)
            x = box[:, None, 0] + t * (box[:, None, 2] - box[:, None, 0])
            y = box[:, None, 1] + t * (box[:, None, 3] - box[:, None, 1])
            target["keypoints"] = torch.stack((x, y, torch.ones_like(x)), dim=2)
        found.append({k: v.to(images.device) for k, v in target.items()})
    return found


def train_step(model: nn.Module, inputs: tuple[torch.Tensor, ...], optimizer: torch.optim.Optimizer) -> None:
    """torchvision's reference training step: the model returns its losses, summed."""
    (images,) = inputs
    heads = getattr(model, "roi_heads", None)
    masks = getattr(heads, "mask_head", None) is not None
    keypoints = getattr(heads, "keypoint_predictor", None)
    points = int(keypoints.kps_score_lowres.out_channels) if keypoints is not None else 0
    losses = model(list(images), targets(images, masks=masks, keypoints=points))
    loss = sum(losses.values())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def infer_step(model: nn.Module, inputs: tuple[torch.Tensor, ...], optimizer: Any) -> None:
    (images,) = inputs
    with torch.no_grad():
        model(list(images))

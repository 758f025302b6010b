"""torchvision classification models by name (`resnet50`, `vit_b_16`, ...), untrained. Needs torchvision.

memtrace benchmarks/models/torchvision_models.py:build --arg name=resnet50 --input 32x3x224x224 --device cuda
"""

from __future__ import annotations

from torch import nn


def build(name: str = "resnet50", classes: int = 1000) -> nn.Module:
    import torchvision

    return torchvision.models.get_model(name, weights=None, num_classes=classes)  # type: ignore[no-any-return]

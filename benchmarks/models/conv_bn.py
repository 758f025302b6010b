"""A small conv-BN-ReLU CNN (two stages, global average pooling, a linear head): the case compiling helps
most on the CPU, where inductor fuses batch norm and ReLU into one kernel and keeps fewer activations
(docs/compile.md, tests/test_compile.py)."""

from __future__ import annotations

from torch import nn


def build(width: int = 32, classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, classes),
    )

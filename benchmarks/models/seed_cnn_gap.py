"""The seed CNN with a global-average-pooling head (the fix `--diagnose` proposes for the seed at 1080p).

The same four ``Conv2d -> ReLU -> MaxPool2d`` stages as `seed_cnn.build`, then
``AdaptiveAvgPool2d(1) -> Flatten -> Linear(128, 512) -> ReLU -> Linear``: the head no longer grows with the
resolution (``fc1`` holds 128 x 512 weights instead of 1,029,120 x 512 at 1920x1080).

memtrace benchmarks/models/seed_cnn_gap.py:build --input 1x3x1080x1920 --gpu rtx4070
"""

from __future__ import annotations

import itertools
from collections import OrderedDict

from torch import nn

CHANNELS: tuple[int, ...] = (3, 32, 64, 128, 128)  # as seed_cnn.py (loaded by path: no package import)


def build(classes: int = 10) -> nn.Module:
    """Build the pooled-head seed CNN for ``(N, 3, H, W)`` inputs of any size and ``classes`` outputs."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i, (c_in, c_out) in enumerate(itertools.pairwise(CHANNELS), start=1):
        layers[f"conv{i}"] = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)
        layers[f"relu{i}"] = nn.ReLU()
        layers[f"pool{i}"] = nn.MaxPool2d(2)
    n_stages = len(CHANNELS) - 1
    layers["gap"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()
    layers["fc1"] = nn.Linear(CHANNELS[-1], 512)
    layers[f"relu{n_stages + 1}"] = nn.ReLU()
    layers["fc2"] = nn.Linear(512, classes)
    return nn.Sequential(layers)

"""The CNN of the seed analysis.

Four ``Conv2d(3x3, padding=1) -> ReLU -> MaxPool2d(2)`` stages with channels
3 -> 32 -> 64 -> 128 -> 128, followed by ``Flatten -> Linear -> ReLU -> Linear``.

The first fully connected layer dominates the parameter count: at the seed
resolution ``h=1080, w=1920`` its ``in_features`` is ``128 * 67 * 120 = 1,029,120``,
i.e. about 527M weights for ``fc1`` alone.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict

from torch import nn

CHANNELS: tuple[int, ...] = (3, 32, 64, 128, 128)


def build(h: int = 144, w: int = 256, classes: int = 10) -> nn.Module:
    """Build the seed-analysis CNN for ``(N, 3, h, w)`` inputs and ``classes`` outputs."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i, (c_in, c_out) in enumerate(itertools.pairwise(CHANNELS), start=1):
        layers[f"conv{i}"] = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)
        layers[f"relu{i}"] = nn.ReLU()
        layers[f"pool{i}"] = nn.MaxPool2d(2)
    n_stages = len(CHANNELS) - 1
    layers["flatten"] = nn.Flatten()
    layers["fc1"] = nn.Linear(CHANNELS[-1] * (h // 16) * (w // 16), 512)
    layers[f"relu{n_stages + 1}"] = nn.ReLU()
    layers["fc2"] = nn.Linear(512, classes)
    return nn.Sequential(layers)

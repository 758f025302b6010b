"""memtrace: exact memory of a PyTorch training step, simulated on the meta device."""

from __future__ import annotations

__version__ = "0.1.0"

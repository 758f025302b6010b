"""Kernel-internal buffers of PyTorch's CPU kernels, as the CPU allocator sees them.

Each rule is checked against the profiler's allocation events (tests/test_rules_cpu.py).
"""

from __future__ import annotations

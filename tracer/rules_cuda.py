"""Kernel workspaces on CUDA (cuBLAS, cuDNN), modelled from PyTorch's source."""

from __future__ import annotations

"""The CPU's fused RNN kernels (oneDNN `mkldnn_rnn_layer`), emulated on meta tensors."""

from __future__ import annotations

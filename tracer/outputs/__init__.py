"""Renderers of a Result: the terminal report, saved JSON, HTML, plots, palette, and the exports (Chrome
trace, PyTorch memory snapshot)."""

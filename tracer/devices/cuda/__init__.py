"""The CUDA device model, from PyTorch's source: presets (memory, compute capability), BLAS operand copies,
loss kernels; the caching allocator's block rounding is `round_size` in the package above.
"""

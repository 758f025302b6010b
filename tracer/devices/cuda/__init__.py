"""The CUDA device model, from PyTorch's source: presets (memory, compute capability), BLAS operand copies,
loss kernels, the caching allocator (allocator*.py) replayed over the trace (placement.py), library workspaces
(cuBLAS in blas.py, the cuDNN estimate in conv.py), SDPA's kernel choice (sdp_choice.py, attention.py), and
safe reading of memory snapshots (snapshot*.py).
"""

"""The CPU device model: what CPU kernels allocate inside themselves, held against the CPU allocator.

- isa.py: which instruction set oneDNN will really use on this machine (CPU flags, ONEDNN_MAX_CPU_ISA).
- conv.py: oneDNN and im2col convolution buffers. gemm_lowp.py: bf16/fp16 oneDNN GEMM scratchpads.
- blas.py: matmul operand copies. norm.py: LayerNorm copies and buffers. loss.py: mse_loss.
- attention.py: the CPU's fused flash SDPA. rnn.py: oneDNN LSTM/GRU/RNN kernels.
- gloo.py: the CPU process group's all-gather and reduce-scatter buffers (--ddp/--fsdp ranks).
- rng.py: checkpointing's CPU RNG-state stash. scaled_mm.py: `_scaled_mm`'s emulated fp8 GEMM (float8).
"""

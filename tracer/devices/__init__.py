"""Device models: one folder a device (`cpu/`, `cuda/`), each rule or kernel patch one registered function
beside its siblings (`core/registry.py` holds the registry, `engine/device_model.py` loads it), the shared
SDPA replacement (`shared.py`) and the target GPU's facts (`gpu.py`). The CPU allocator is exact; the CUDA
caching allocator is replayed over the trace by `cuda/placement.py`.
"""

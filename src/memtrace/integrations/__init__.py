"""memtrace inside training frameworks: `memtrace.integrations.transformers.MemtraceCallback` (a Hugging Face
`TrainerCallback`) and `memtrace.integrations.lightning.MemtraceCallback` (a Lightning `Callback`).

Each module imports its framework when it is itself imported, never from here: neither framework is a
dependency of memtrace (`pip install 'torch-memtrace[integrations]'` brings both).
"""

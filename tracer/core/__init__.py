"""The records and the parsing: frozen dataclasses, errors, specs, assumptions, presets, the rule registry.
Pure: no torch, and nothing of memtrace imported from outside this room."""

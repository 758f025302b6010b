"""`memtrace gpus`: the GPU presets --gpu accepts."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from memtrace.tracer.devices.cuda.presets import PRESETS
from memtrace.tracer.specs import human_bytes


@click.command("gpus", short_help="List the GPU presets.")
def gpus() -> None:
    """List the GPU presets: name, memory (as the driver reports it), compute capability."""
    table = Table(show_edge=False)
    for col in ("name", "memory", "bytes", "compute capability", "what"):
        table.add_column(col, justify="right" if col == "bytes" else "left")
    for p in PRESETS.values():
        table.add_row(
            p.name, human_bytes(p.memory_bytes), f"{p.memory_bytes:,}", p.compute_capability, p.description
        )
    Console().print(table)

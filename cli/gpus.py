"""`memtrace gpus`: the GPU presets --gpu accepts."""

from __future__ import annotations

import textwrap

import click
from rich.console import Console, JustifyMethod
from rich.table import Table

from memtrace.tracer.core.presets import PRESETS, GpuPreset, presets_named, short_names

_WIDTH = 80  # a terminal's default; the table fits it too
_COLUMNS: tuple[tuple[str, JustifyMethod], ...] = (
    ("--gpu", "left"),
    ("or", "left"),
    ("GiB", "right"),
    ("bytes", "right"),
    ("cc", "right"),
)


@click.command("gpus", short_help="List the GPU presets.")
def gpus() -> None:
    """List the GPU presets: name, memory (as the driver reports it), compute capability."""
    Console().print(preset_table())
    for line in notes():
        click.echo(textwrap.fill(line, width=_WIDTH, subsequent_indent="  "))


def preset_table() -> Table:
    """One row a preset: its names, its memory in GiB and bytes, its compute capability, the product."""
    table = Table(show_edge=False, pad_edge=False)
    for title, justify in _COLUMNS:
        table.add_column(title, justify=justify, no_wrap=True)
    table.add_column("GPU", no_wrap=True)
    for p in PRESETS.values():
        table.add_row(
            p.name,
            ", ".join(short_names(p)),
            f"{p.memory_bytes / 2**30:.2f}",
            f"{p.memory_bytes:,}",
            p.compute_capability,
            p.description,
        )
    return table


def notes() -> list[str]:
    """What the columns mean and what --gpu refuses, from the presets themselves."""
    lines = [
        "GiB, bytes: total_memory as the CUDA driver reports it; cc: compute capability.",
        "A bare number means a model number (`or`); a size needs a unit: 24GB, 24GiB.",
    ]
    ambiguous = [f"{family} ({', '.join(p.name for p in found)})" for family, found in _families()]
    if ambiguous:
        lines.append("Ambiguous, refused: " + "; ".join(ambiguous) + ".")
    return lines


def _families() -> list[tuple[str, list[GpuPreset]]]:
    """The family names (before the '-') shared by several presets."""
    families = dict.fromkeys(p.name.split("-")[0] for p in PRESETS.values())
    return [(f, found) for f in families if len(found := presets_named(f)) > 1]

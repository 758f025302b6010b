"""`--hf-args FILE` on the command line: the file's flags (tracer/core/hf_args.py) fill the flags the command
line leaves unset; a flag given both ways with two values is one line, exit 2."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from memtrace.tracer.core import specs
from memtrace.tracer.core.errors import MemtraceError
from memtrace.tracer.core.hf_args import HfArgs, hf_args, read_file

FLAGS = {name: f"--{name}" for name in ("amp", "accumulate", "checkpoint", "optimizer")}
FLAGS |= {
    "compile_model": "--compile",
    "compile_mode": "--compile-mode",
    "compile_backend": "--compile-backend",
}
_GIVEN = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


def apply_hf_args(path: Path, options: dict[str, Any]) -> dict[str, Any]:
    """`options` (the command's parsed flags) with the file's flags filled in where the command line left
    them unset; prints one line saying what the file set, and one naming the keys not read."""
    asked = hf_args(read_file(path), str(path))
    ctx = click.get_current_context()
    merged = dict(options)
    for name, value in asked.flags.items():
        value = specs.parse_optimizer(value) if name == "optimizer" else value
        if ctx.get_parameter_source(name) in _GIVEN and _norm(merged[name]) != _norm(value):
            raise MemtraceError(
                f"--hf-args {path}: {asked.asked_by[name]} means {FLAGS[name]} {_text(value)}, but the "
                f"command line gives {FLAGS[name]} {_text(merged[name])}"
            )
        merged[name] = value
    merged["inputs"] = _inputs(asked, tuple(merged.get("inputs") or ()), path)
    shown = [FLAGS[n] if n == "compile_model" else f"{FLAGS[n]} {_text(merged[n])}" for n in asked.flags] + [
        f"--input {i.text()}" for i in merged["inputs"]
    ]
    click.echo(f"memtrace: --hf-args {path}: {' '.join(shown)}", err=True)
    if asked.unread:
        click.echo(f"memtrace: note: --hf-args {path}: keys not read: {', '.join(asked.unread)}", err=True)
    return merged


def _inputs(asked: HfArgs, given: tuple[Any, ...], path: Path) -> tuple[Any, ...]:
    """The Trainer's causal-LM batch when no --input is given; else the inputs, checked against the file."""
    if not given:
        if asked.sequence is None:
            raise MemtraceError(
                f"--hf-args {path}: no max_length (or max_seq_length) and no --input: the sequence length "
                "is unknown"
            )
        dims = f"{asked.batch}x{asked.sequence}:int64"
        return (specs.parse_input(f"input_ids={dims}"), specs.parse_input(f"labels={dims}"))
    for spec in given:
        batch = spec.shape[0] if spec.shape else None
        if isinstance(batch, int) and batch != asked.batch:
            raise MemtraceError(
                f"--hf-args {path}: per_device_train_batch_size={asked.batch} but --input {spec.text()} has "
                f"batch {batch}"
            )
        length = spec.shape[1] if len(spec.shape) > 1 and spec.dtype == "int64" else None
        if asked.sequence is not None and isinstance(length, int) and length != asked.sequence:
            raise MemtraceError(
                f"--hf-args {path}: max_length={asked.sequence} but --input {spec.text()} has sequence "
                f"{length}"
            )
    return given


def _norm(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _text(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    text = getattr(value, "text", None)
    return text() if callable(text) else str(value)

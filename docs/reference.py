"""The generated reference pages: the CLI from click's own help records, the Python API from the code.

`cli_markdown()` walks `memtrace.cli.main.cli` (every subcommand, every option as `--help` prints it);
`api_markdown()` gives the signatures and docstrings of `memtrace.simulate` and `MemoryMonitor` and the
fields of the records a `Result` is made of (type, default, and the comment beside the field in the source).
Both are written by `docs/build.py` into `docs/generated/`, which the pages include.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Iterator
from typing import Any

import click

MAX_WIDTH = 100
RECORDS = ("Result", "ModelInfo", "Peak", "PhasePeak", "TensorRow", "LayerShare", "Verdict", "CudaFigures")


def _cell(text: str) -> str:
    """One markdown table cell: a single line, pipes escaped."""
    return " ".join(text.replace("\b", "").split()).replace("|", "\\|")


def _paragraphs(text: str) -> str:
    """click's help text as markdown: `\\b` blocks (kept as they are) become code blocks."""
    out: list[str] = []
    for block in inspect.cleandoc(text).split("\n\n"):
        if block.startswith("\b"):
            out.append("```\n" + block.removeprefix("\b").strip("\n") + "\n```")
        else:
            out.append(" ".join(block.split()))
    return "\n\n".join(out)


def _command_section(name: str, command: click.Command, parent: click.Context) -> Iterator[str]:
    ctx = click.Context(command, info_name=name, parent=parent, max_content_width=MAX_WIDTH)
    title = " ".join(ctx.command_path.split())
    yield f"## `{title}`\n"
    yield "```\n" + f"{title} {' '.join(command.collect_usage_pieces(ctx))}".strip() + "\n```\n"
    if command.help:
        yield _paragraphs(command.help) + "\n"
    options = [p for p in command.get_params(ctx) if isinstance(p, click.Option)]
    rows = [record for p in options if (record := p.get_help_record(ctx)) is not None]
    if rows:
        yield "| option | meaning |\n| --- | --- |"
        yield from (f"| `{_cell(flags)}` | {_cell(text)} |" for flags, text in rows)
        yield ""


def cli_markdown(group: click.Group) -> str:
    """The reference of the `memtrace` command and every subcommand, as markdown."""
    root = click.Context(group, info_name="memtrace", max_content_width=MAX_WIDTH)
    parts = ["# CLI reference\n", "Generated from the click commands by `docs/build.py`.\n"]
    if group.help:
        parts.append(_paragraphs(group.help) + "\n")
    parts.append("Commands: " + ", ".join(f"`{name}`" for name in sorted(group.commands)) + ".\n")
    for name in group.list_commands(root):
        command = group.get_command(root, name)
        if command is not None and not command.hidden:
            parts.extend(_command_section(name, command, root))
    return "\n".join(parts).rstrip() + "\n"


def _field_comments(cls: type) -> dict[str, str]:
    """The `# comment` beside each field in the class's source."""
    comments: dict[str, str] = {}
    for line in inspect.getsource(cls).splitlines():
        match = re.match(r"\s+(\w+): [^#]+#\s*(.+)$", line)
        if match:
            comments[match[1]] = match[2].strip()
    return comments


def _default(field: dataclasses.Field[Any]) -> str:
    if field.default is not dataclasses.MISSING:
        return f"`{field.default!r}`"
    if field.default_factory is not dataclasses.MISSING:
        return f"`{field.default_factory()!r}`"
    return "required"


def record_markdown(cls: type) -> str:
    """A record's fields (name, type, default, source comment) and its properties, as markdown."""
    comments = _field_comments(cls)
    doc = " ".join(inspect.cleandoc(cls.__doc__ or "").split())
    doc = "" if doc.startswith(f"{cls.__name__}(") else doc  # the dataclass's generated docstring
    lines = [
        f"### `{cls.__name__}`\n",
        f"{doc}\n",
        "| field | type | default | note |",
        "| --- | --- | --- | --- |",
    ]
    for field in dataclasses.fields(cls):
        note = _cell(comments.get(field.name, ""))
        lines.append(f"| `{field.name}` | `{_cell(str(field.type))}` | {_default(field)} | {note} |")
    props = [(n, p) for n, p in vars(cls).items() if isinstance(p, property)]
    if props:
        lines.append(
            "\nProperties: "
            + "; ".join(f"`{n}`" + (f": {_cell(p.__doc__)}" if p.__doc__ else "") for n, p in props)
            + "."
        )
    return "\n".join(lines) + "\n"


def _function_markdown(title: str, obj: Any) -> str:
    body = inspect.cleandoc(obj.__doc__ or "")
    return f"### `{title}`\n\n```python\n{_signature(title, obj)}\n```\n\n{body}\n"


def _signature(title: str, obj: Any) -> str:
    """The signature as the source spells it (annotations are strings here), one parameter a line."""
    signature = inspect.signature(obj)
    lines, star = [], False
    for param in signature.parameters.values():
        if param.kind is param.KEYWORD_ONLY and not star:
            lines.append("*")
            star = True
        text = param.name
        if param.annotation is not param.empty:
            text += f": {param.annotation}"
        if param.default is not param.empty:
            default = getattr(param.default, "__name__", None) or repr(param.default)
            text += f" = {default}"
        lines.append(text)
    returns = signature.return_annotation
    tail = f" -> {returns}" if returns is not signature.empty and returns != "None" else ""
    return f"{title}(\n" + "".join(f"    {line},\n" for line in lines) + f"){tail}"


def api_markdown() -> str:
    """Signatures and docstrings of the public entry points, and the fields of the result records."""
    from memtrace.monitor import MemoryMonitor
    from memtrace.tracer.core import records
    from memtrace.tracer.engine.recipes import Recipe
    from memtrace.tracer.simulate import simulate

    parts = [_function_markdown("memtrace.simulate", simulate), record_markdown(Recipe)]
    parts.append(_function_markdown("memtrace.monitor.MemoryMonitor", MemoryMonitor))
    parts.append(inspect.cleandoc(inspect.getmodule(MemoryMonitor).__doc__ or "") + "\n")  # type: ignore[union-attr]
    for name in ("predict", "step", "read", "to_json"):
        parts.append(_function_markdown(f"MemoryMonitor.{name}", getattr(MemoryMonitor, name)))
    parts.append("## The result records (`memtrace.tracer.core.records`)\n")
    parts.extend(record_markdown(getattr(records, name)) for name in RECORDS)
    return "\n".join(parts)

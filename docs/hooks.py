"""The mkdocs hook that puts the generated output into the pages (`hooks:` in mkdocs.yml).

Two markers, both filled from `docs/generated/` (written by `docs/build.py`); a missing file or key is an
error, so a page can never show output the build did not produce:

- `<!-- include: NAME -->` on a line of its own: the file's text (a command and its output, a reference).
- `{{ NAME.json:key.path }}` inline: a figure from a result saved with `--output`. Integers are bytes,
  written as the report writes them (`10.59 GB (9.86 GiB)`); `*_fraction` floats are percentages, other
  floats have two decimals. A list item is named by index, `what_if.1.peak_bytes`, or by the start of a
  field, `what_if.change~bf16.peak_bytes`. A backslash before the braces shows the marker as it is.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

GENERATED = Path(__file__).resolve().parent / "generated"
INCLUDE = re.compile(r"^<!-- include: (\S+) -->$", re.MULTILINE)
VALUE = re.compile(r"(\\?)\{\{ (\S+\.json):(\S+) \}\}")  # a backslash before it: shown as it is


class DocsError(Exception):
    """A marker that names no generated file or key."""


def _read(directory: Path, name: str) -> str:
    path = directory / name
    if not path.is_file():
        raise DocsError(f"{name} is not generated: run docs/build.py")
    return path.read_text()


@cache
def _json(path: Path, mtime: float) -> Any:
    del mtime  # part of the cache key only
    return json.loads(path.read_text())


def _step(node: Any, part: str) -> Any:
    """A key path's step: a dict key, a list index, `FIELD~PREFIX` (the first row whose FIELD starts so)."""
    if not isinstance(node, list):
        return node[part]
    if "~" not in part:
        return node[int(part)]
    field, prefix = part.split("~", 1)
    return next(row for row in node if str(row[field]).startswith(prefix))


def lookup(directory: Path, name: str, key: str) -> Any:
    """The value at dotted `key` in the generated JSON file `name`."""
    path = directory / name
    _read(directory, name)
    node: Any = _json(path, path.stat().st_mtime)
    for part in key.split("."):
        try:
            node = _step(node, part)
        except (KeyError, IndexError, ValueError, TypeError, StopIteration):
            raise DocsError(f"{name} has no {key}") from None
    return node


def value(directory: Path, name: str, key: str) -> str:
    """One figure of a saved result: `key` is a dotted path; ints are shown as bytes, other values as text."""
    from memtrace.tracer.core.specs import human_bytes

    node = lookup(directory, name, key)
    if isinstance(node, float):
        return f"{node:.1%}" if key.endswith("fraction") else f"{node:.2f}"
    if isinstance(node, bool) or not isinstance(node, int):
        return str(node)
    text: str = human_bytes(node)
    return text


def expand(markdown: str, directory: Path = GENERATED) -> str:
    """The page with every marker replaced by what `docs/build.py` generated."""
    markdown = INCLUDE.sub(lambda m: _read(directory, m[1]).rstrip("\n"), markdown)
    return VALUE.sub(lambda m: m[0][1:] if m[1] else value(directory, m[2], m[3]), markdown)


def markers(markdown: str) -> set[str]:
    """The generated files a page needs."""
    return set(INCLUDE.findall(markdown)) | {m[1] for m in VALUE.findall(markdown) if not m[0]}


def on_page_markdown(markdown: str, **_: Any) -> str:
    """mkdocs' page hook: a marker without its output stops the build."""
    from mkdocs.exceptions import PluginError

    try:
        page: str = expand(markdown)
    except DocsError as exc:
        raise PluginError(str(exc)) from None
    return page

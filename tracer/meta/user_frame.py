"""The file and line of user code that is running: where a data-dependent read was asked for.

The innermost frame of the Python stack that belongs neither to PyTorch, nor to memtrace, nor to the
standard library: the user's step, loss or model (a library's modeling file counts as the model's code).
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path
from types import FrameType

import torch

import memtrace

_TRACER = Path(__file__).resolve().parent.parent  # tracer/ (memtrace/tracer once installed)
_OWN = (
    str(Path(torch.__file__).resolve().parent),
    str(_TRACER),
    str(_TRACER.parent / "cli"),  # a source tree's cli/ beside tracer/ (installed, both are in the package)
    str(Path(memtrace.__file__).resolve().parent),
    sysconfig.get_paths()["stdlib"],
    sysconfig.get_paths()["platstdlib"],
)


def _is_own(filename: str) -> bool:
    if filename.startswith("<"):  # <frozen ...>, <string>
        return True
    path = str(Path(filename).resolve())
    return any(path.startswith(root + os.sep) for root in _OWN)


def user_frame(frame: FrameType | None = None) -> str | None:
    """`path:line` of the innermost user frame (relative to the working directory when under it)."""
    found = user_frame_object(frame or sys._getframe(1))
    return None if found is None else place(found.f_code.co_filename, found.f_lineno)


def user_frame_object(frame: FrameType | None = None) -> FrameType | None:
    """The innermost user frame itself (the caller must not keep it: a frame keeps its locals alive)."""
    frame = frame or sys._getframe(1)
    while frame is not None:
        if not _is_own(frame.f_code.co_filename):
            return frame
        frame = frame.f_back
    return None


def is_user(frame: FrameType) -> bool:
    return not _is_own(frame.f_code.co_filename)


def place(filename: str, line: int | None) -> str:
    """`path:line`, the path relative to the working directory when under it."""
    return f"{_shown(filename)}:{line}"


def _shown(filename: str) -> str:
    path = Path(filename).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)

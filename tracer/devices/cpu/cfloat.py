"""The C arithmetic oneDNN's heuristics are ported with: single-precision rounding after each operation,
integer division rounded up, and rounding up to a multiple (`utils::div_up`, `utils::rnd_up`)."""

from __future__ import annotations

import ctypes


def f32(x: float) -> float:
    """`x` rounded to single precision, as C++ `float` arithmetic rounds after every operation."""
    return ctypes.c_float(x).value


def cdiv(a: int, b: int) -> int:
    """`div_up`: a / b rounded up."""
    return -(-a // b)


def rup(a: int, b: int) -> int:
    """`rnd_up`: a rounded up to a multiple of b."""
    return cdiv(a, b) * b

"""Pure parsing of what users type: input specs, sizes, GPUs, builders, key=value arguments.

No torch import. Every parser raises SpecError with a one-line message naming what was wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from . import hf_optim
from .errors import MemtraceError
from .presets import (
    PRESETS,
    GpuPreset,
    default_headroom,
    presets_named,
    presets_numbered,
)
from .records import GpuSpec, InputSpec


class SpecError(MemtraceError, ValueError):
    """A malformed value on the command line or in an API call."""


class OptionError(SpecError):
    """A SpecError whose message starts with the option and the value given (`--gpu 24: ...`): the CLI
    prints it as it is."""


DTYPE_ALIASES: dict[str, str] = {
    "float32": "float32",
    "fp32": "float32",
    "f32": "float32",
    "float": "float32",
    "float16": "float16",
    "fp16": "float16",
    "f16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "int64": "int64",
    "long": "int64",
    "i64": "int64",
    "int32": "int32",
    "int": "int32",
    "i32": "int32",
    "bool": "bool",
}

_SYMBOL = re.compile(r"[A-Z][A-Z0-9_]*")
_UNITS: dict[str, int] = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*")


def parse_dtype(text: str) -> str:
    dtype = DTYPE_ALIASES.get(text.strip().lower())
    if dtype is None:
        known = ", ".join(sorted(set(DTYPE_ALIASES.values())))
        raise SpecError(f"unknown dtype {text!r} (known: {known})")
    return dtype


_NAMED = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)")


def parse_input(text: str) -> InputSpec:
    """`1x3x1080x1920`, `Bx3x224x224:bf16`, `4x128:int64`; `input_ids=4x512:int64` is a keyword input."""
    named = _NAMED.fullmatch(text)
    if named is not None:
        return replace(parse_input(named.group(2)), name=named.group(1))
    shape_text, _, dtype_text = text.partition(":")
    if not shape_text.strip():
        raise SpecError(f"malformed --input {text!r}: expected dimensions like 1x3x224x224[:dtype]")
    dims: list[int | str] = []
    for part in shape_text.lower().split("x") if _all_numeric(shape_text) else _split_dims(shape_text):
        dims.append(_parse_dim(part, text))
    dtype = parse_dtype(dtype_text) if dtype_text else "float32"
    return InputSpec(tuple(dims), dtype)


def _all_numeric(shape_text: str) -> bool:
    return all(p.strip().isdigit() for p in shape_text.lower().split("x"))


def _split_dims(shape_text: str) -> list[str]:
    # Symbols are upper case, so a lower-case 'x' is always the separator.
    return shape_text.split("x")


def _parse_dim(part: str, text: str) -> int | str:
    part = part.strip()
    if part.isdigit():
        value = int(part)
        if value <= 0:
            raise SpecError(f"malformed --input {text!r}: dimension {part} must be positive")
        return value
    if _SYMBOL.fullmatch(part):
        return part
    raise SpecError(
        f"malformed --input {text!r}: dimension {part!r} is neither a positive integer nor a symbol like B"
    )


def input_symbols(specs: tuple[InputSpec, ...] | list[InputSpec]) -> list[str]:
    seen: list[str] = []
    for spec in specs:
        for d in spec.shape:
            if isinstance(d, str) and d not in seen:
                seen.append(d)
    return seen


def bind_inputs(
    specs: tuple[InputSpec, ...] | list[InputSpec], values: dict[str, int]
) -> tuple[InputSpec, ...]:
    bound = []
    for spec in specs:
        shape = tuple(values[d] if isinstance(d, str) else d for d in spec.shape)
        missing = [d for d in shape if isinstance(d, str)]
        if missing:
            raise SpecError(f"input {spec.text()} has symbol {missing[0]} with no value")
        bound.append(replace(spec, shape=shape))
    return tuple(bound)


def check_input_names(specs: tuple[InputSpec, ...] | list[InputSpec]) -> None:
    """Keyword inputs have distinct names."""
    names = [s.name for s in specs if s.name is not None]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SpecError(f"input {twice[0]!r} is given twice")


def parse_cudnn_version(text: str) -> int:
    """`9.10.2` or cuDNN's own integer `91002` (major * 10000 + minor * 100 + patch)."""
    parts = text.strip().split(".")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) == 1 and numbers[0] > 0:
        return numbers[0]
    if len(numbers) in (2, 3) and all(n >= 0 for n in numbers):
        major, minor, patch = (*numbers, 0)[:3]
        return major * 10000 + minor * 100 + patch
    raise SpecError(f"malformed --cudnn-version {text!r}: expected a version like 9.10.2 or 91002")


LOSSES = ("auto", "sum", "mean", "ce", "mse")


@dataclass(frozen=True)
class LossSpec:
    """The default step's loss: a built-in name or a user function `FILE.py:FUNC` called as
    `FUNC(output, *targets)`; `class_dim` overrides the class dimension of `ce`."""

    name: str = "auto"
    targets: tuple[InputSpec, ...] = ()
    class_dim: int | None = None

    @property
    def is_function(self) -> bool:
        return self.name not in LOSSES

    def text(self) -> str:
        text = self.name
        if self.class_dim is not None:
            text += f" (class dim {self.class_dim})"
        if self.targets:
            text += " with targets " + ", ".join(t.text() for t in self.targets)
        return text


def parse_loss(text: str) -> str:
    """`auto`, `sum`, `mean`, `ce`, `mse`, or `FILE.py:FUNC` / `package.module:FUNC`."""
    name = text.strip()
    if name.lower() in LOSSES:
        return name.lower()
    if ":" not in name:
        raise SpecError(f"unknown --loss {text!r} (auto, sum, mean, ce, mse, or FILE.py:FUNC)")
    parse_target(name, "--loss")
    return name


def parse_size(text: str, *, allow_zero: bool = False, option: str = "size") -> int:
    """`12GB` = 12e9 bytes, `12GiB` = 12 * 2**30, `512MiB`, `1.5GB`, `1000B`; a bare number is refused
    (`512`: bytes? MB?), except `0` where zero is allowed. `option` names the value in that refusal."""
    if _is_bare_number(text) and not (allow_zero and float(text) == 0):
        raise OptionError(f"{option} {text.strip()}: a size needs a unit ({unit_hint(text)})")
    match = _SIZE.fullmatch(text)
    unit = match.group(2).upper() if match else ""
    if not match or unit not in _UNITS:
        raise SpecError(f"malformed size {text!r}: expected a number with a unit like 12GB, 24GiB, 512MiB")
    value = round(float(match.group(1)) * _UNITS[unit])
    if value < 0 or (value == 0 and not allow_zero):
        raise SpecError(f"size {text!r} must be greater than zero")
    return value


_BARE_NUMBER = re.compile(r"\s*[0-9]*\.?[0-9]+\s*")


def _is_bare_number(text: str) -> bool:
    return _BARE_NUMBER.fullmatch(text) is not None


def unit_hint(text: str, unit: str | None = None) -> str:
    """The sizes a bare number likely meant, in `unit` (G, M) or by its magnitude: `24GB, 24GiB`;
    `512MB, 512MiB`; bytes for a large one."""
    number = text.strip()
    value = float(number)
    if unit is None and value >= 10**5:
        return f"{number}B"
    unit = unit or ("G" if value < 100 else "M")
    return f"{number}{unit}B, {number}{unit}iB"


def parse_gpu(text: str, *, option: str = "--gpu") -> GpuSpec:
    """A preset name (`rtx4070`, `a100-80gb`, `h100`), a model number with one preset (`4090`), or a
    memory size with a unit (`12GB`, `24GiB`). `option` names the value in the messages."""
    name = text.strip()
    if _is_bare_number(name):
        return _gpu_numbered(name, option)
    if name[:1].isdigit() or name[:1] == ".":
        return GpuSpec(name, parse_size(name, option=option))
    return _gpu_named(name, option)


def _gpu_numbered(number: str, option: str) -> GpuSpec:
    found = presets_numbered(number)
    if not found:
        hint = unit_hint(number, "G")  # a GPU holds gigabytes
        raise OptionError(
            f"{option} {number}: a size needs a unit ({hint}) or a preset (rtx4090, a100-40gb, ...)"
        )
    return _one_preset(number, found, option)


def _gpu_named(name: str, option: str) -> GpuSpec:
    found = presets_named(name)
    if not found:
        known = ", ".join(sorted(PRESETS))
        raise SpecError(f"unknown GPU {name!r}: give a size like 12GB or one of: {known}")
    return _one_preset(name, found, option)


def _one_preset(name: str, found: list[GpuPreset], option: str) -> GpuSpec:
    if len(found) > 1:
        names = [p.name for p in found]
        raise OptionError(f"{option} {name} is ambiguous: {', '.join(names[:-1])} or {names[-1]}")
    return GpuSpec(found[0].name, found[0].memory_bytes)


def parse_tolerance(text: str | float) -> float:
    """A tolerance as a fraction: `1%` and `0.01` are both 0.01. Every tolerance option goes through here.

    A bare number is a fraction and must be below 1 (`1` would silently mean 100%): `1%` is one percent.
    """
    if isinstance(text, float | int):
        text = repr(float(text))
    raw = text.strip()
    percent = raw.endswith("%")
    try:
        value = float(raw[:-1] if percent else raw)
    except ValueError:
        raise SpecError(
            f"malformed tolerance {text!r}: expected a percentage like 1% or a fraction like 0.01"
        ) from None
    if percent:
        value /= 100
    if not (value >= 0 and value == value):
        raise SpecError(f"tolerance {text!r} must not be negative")
    if not percent and value >= 1:
        raise SpecError(
            f"tolerance {text!r} is ambiguous: write {raw}% for a percentage or a fraction below 1"
        )
    return value


@dataclass(frozen=True)
class Headroom:
    """Memory kept free on the GPU: bytes, a fraction of the GPU, or the default estimate (both None)."""

    nbytes: int | None = None
    fraction: float | None = None

    def of(self, gpu_bytes: int, reserved: bool = False) -> int:
        if self.nbytes is not None:
            return self.nbytes
        if self.fraction is not None:
            return int(self.fraction * gpu_bytes)
        return default_headroom(gpu_bytes, reserved)

    def text(self) -> str:
        if self.nbytes is not None:
            return human_bytes(self.nbytes)
        if self.fraction is not None:
            return f"{100 * self.fraction:g}%"
        return "default (CUDA context estimate, + 5% when reserved memory is not modelled)"


def parse_headroom(text: str, *, option: str = "--headroom") -> Headroom:
    """`0`, `1GB`, `512MiB`, `5%`, or `auto`; a bare number other than 0 is refused."""
    text = text.strip()
    if _is_bare_number(text) and float(text) != 0:
        hint = unit_hint(text)
        raise OptionError(
            f"{option} {text}: a size needs a unit ({hint}); 0, a percentage (5%) and auto need none"
        )
    if text.lower() in ("auto", "default"):
        return Headroom()
    if text.endswith("%"):
        try:
            pct = float(text[:-1])
        except ValueError:
            pct = -1.0
        if not 0 <= pct < 100:
            raise SpecError(f"malformed headroom {text!r}: a percentage must be between 0% and 100%")
        return Headroom(fraction=pct / 100)
    return Headroom(nbytes=parse_size(text, allow_zero=True, option=option))


@dataclass(frozen=True)
class Target:
    """Where a builder (or a class) lives: `path/to/file.py:func` or `package.module:func`."""

    source: str
    attr: str
    is_file: bool

    def text(self) -> str:
        return f"{self.source}:{self.attr}"


def parse_target(text: str, what: str = "builder") -> Target:
    source, sep, attr = text.rpartition(":")
    if not sep or not source or not attr or not attr.replace(".", "_").isidentifier():
        raise SpecError(f"malformed {what} {text!r}: expected FILE.py:FUNC or package.module:FUNC")
    is_file = source.endswith(".py") or "/" in source or "\\" in source
    return Target(source, attr, is_file)


def parse_value(text: str) -> bool | int | float | str | None:
    low = text.strip().lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)  # type: ignore[no-any-return]
        except ValueError:
            pass
    return text


def parse_kv(text: str, what: str = "--arg") -> tuple[str, bool | int | float | str | None]:
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise SpecError(f"malformed {what} {text!r}: expected key=value")
    return key, parse_value(value)


@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    kwargs: tuple[tuple[str, bool | int | float | str | None], ...] = ()

    def text(self) -> str:
        if not self.kwargs:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v}" for k, v in self.kwargs)


def parse_optimizer(text: str) -> OptimizerSpec:
    """`adam`, `sgd:momentum=0.9`, `adamw:lr=1e-3,foreach=false`, `none`, `my_opt.py:Lion`."""
    head, _, rest = text.partition(":")
    if head.strip() == "hf":  # `hf:NAME[:k=v,...]`: the Trainer's `optim` names (tracer/core/hf_optim.py)
        name, _, rest = rest.partition(":")
        name = name.strip()
        if name not in hf_optim.HF_OPTIMIZERS:
            raise SpecError(f"unknown Hugging Face optim {name!r} in --optimizer (known: {hf_optim.known()})")
        head = hf_optim.PREFIX + name
    elif head.endswith(".py") or "/" in head or "." in head:
        # `file.py:Class[:k=v,...]` or `pkg.mod:Class[:k=v,...]`
        cls, _, rest = rest.partition(":")
        head = f"{head}:{cls}"
    name = head.strip()
    if not name:
        raise SpecError(f"malformed --optimizer {text!r}: expected NAME[:key=value,...]")
    kwargs = tuple(parse_kv(item, "--optimizer argument") for item in rest.split(",") if item.strip())
    return OptimizerSpec(name, kwargs)


def short_bytes(n: int) -> str:
    """One unit, powers of ten, for tables: `13.2 GB`."""
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{sign}{n / size:.1f} {unit}"
    return f"{sign}{n} B"


def human_bytes(n: int) -> str:
    """Both conventions, since users read both: `13.21 GB (12.30 GiB)`."""
    sign = "-" if n < 0 else ""
    n = abs(n)
    if n < 1000:
        return f"{sign}{n} B"
    for unit, size, bin_unit, bin_size in (
        ("TB", 10**12, "TiB", 2**40),
        ("GB", 10**9, "GiB", 2**30),
        ("MB", 10**6, "MiB", 2**20),
        ("kB", 10**3, "KiB", 2**10),
    ):
        if n >= size:
            return f"{sign}{n / size:.2f} {unit} ({sign}{n / bin_size:.2f} {bin_unit})"
    return f"{sign}{n} B"  # pragma: no cover


def budget(gpu: GpuSpec, headroom: Headroom | None, reserved: bool = False) -> int:
    """The bytes a step may use on the GPU: its memory less the headroom kept free. Held against reserved
    memory (`reserved`), the default headroom is the CUDA context alone: fragmentation is already counted."""
    kept = (headroom or Headroom()).of(gpu.bytes, reserved)
    if kept >= gpu.bytes:
        raise SpecError(
            f"the headroom ({human_bytes(kept)}) leaves nothing of {gpu.name}'s {human_bytes(gpu.bytes)}"
        )
    return gpu.bytes - kept

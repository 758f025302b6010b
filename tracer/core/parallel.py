"""What a data-parallel job looks like to memtrace: the engine (DDP or FSDP2), the world size, the rank
simulated, and the engine's options. Pure: no torch import (the CLI parses and checks it before any tracing).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import MemtraceError

ENGINES = ("ddp", "fsdp")
FSDP_DTYPES = ("bf16", "fp16", "fp32")
MAX_WORLD = 1024
WRAP_AUTO = "auto"  # `--fsdp-wrap auto`, the default: each block as recipes shard (engine/distributed.py)
WRAP_ROOT = "root"  # `--fsdp-wrap root`: `fully_shard(model)` alone


@dataclass(frozen=True)
class Parallel:
    """`--ddp N` or `--fsdp N` and their options; `rank` is the rank simulated (0 by default)."""

    engine: str
    world: int | str  # a symbol (W) in fit and sweep, substituted before any simulation
    rank: int = 0
    bucket_cap_mb: float | None = None  # DDP; None: PyTorch's default (25 MB)
    reshard_after_forward: bool = True  # FSDP2
    wrap: tuple[str, ...] = ()  # FSDP2: globs of the modules sharded besides the root; () or auto, root
    param_dtype: str | None = None  # FSDP2's MixedPrecisionPolicy
    reduce_dtype: str | None = None
    cpu_offload: bool = False  # FSDP2's CPUOffloadPolicy

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise MemtraceError(f"unknown engine {self.engine!r} (ddp or fsdp)")
        if isinstance(self.world, str):
            if not (self.world.isidentifier() and self.world.isupper()):
                raise MemtraceError(f"--{self.engine} takes a world size or a symbol (W), got {self.world!r}")
        elif not 1 <= self.world <= MAX_WORLD:
            raise MemtraceError(f"--{self.engine} takes a world size from 1 to {MAX_WORLD}, got {self.world}")
        elif not 0 <= self.rank < self.world:
            raise MemtraceError(f"--rank {self.rank} is not a rank of a world of {self.world}")
        if self.rank < 0:
            raise MemtraceError(f"--rank takes a rank from 0, got {self.rank}")
        if self.bucket_cap_mb is not None and (self.engine != "ddp" or self.bucket_cap_mb <= 0):
            raise MemtraceError("--bucket-cap-mb takes a positive size in MB, with --ddp")
        fsdp_only = {
            "--reshard-after-forward": not self.reshard_after_forward,
            "--fsdp-wrap": bool(self.wrap),
            "--fsdp-param-dtype": self.param_dtype is not None,
            "--fsdp-reduce-dtype": self.reduce_dtype is not None,
            "--cpu-offload": self.cpu_offload,
        }
        for flag, given in fsdp_only.items():
            if given and self.engine != "fsdp":
                raise MemtraceError(f"{flag} is an FSDP2 option: it needs --fsdp N")
        keywords = {WRAP_AUTO, WRAP_ROOT} & set(self.wrap)
        if keywords and len(self.wrap) > 1:
            raise MemtraceError(
                f"--fsdp-wrap {sorted(keywords)[0]} is a keyword used alone, not with other globs "
                f"({', '.join(self.wrap)})"
            )
        for flag, dtype in (
            ("--fsdp-param-dtype", self.param_dtype),
            ("--fsdp-reduce-dtype", self.reduce_dtype),
        ):
            if dtype is not None and dtype not in FSDP_DTYPES:
                raise MemtraceError(f"unknown {flag} {dtype!r} ({', '.join(FSDP_DTYPES)})")

    def text(self) -> str:
        """One line for the report: `fsdp 8 (rank 0; wrap blocks.*; params bf16)`."""
        parts = [f"rank {self.rank}"]
        if self.bucket_cap_mb is not None:
            parts.append(f"bucket cap {self.bucket_cap_mb:g} MB")
        if self.engine == "fsdp":
            parts.append(
                "reshard after forward" if self.reshard_after_forward else "no reshard after forward"
            )
            parts.append("wrap " + (",".join(self.wrap) or WRAP_AUTO))
            if self.param_dtype:
                parts.append(f"params {self.param_dtype}")
            if self.reduce_dtype:
                parts.append(f"reduce {self.reduce_dtype}")
            if self.cpu_offload:
                parts.append("cpu offload")
        return f"{self.engine} {self.world} ({'; '.join(parts)})"

    @property
    def symbol(self) -> str | None:
        return self.world if isinstance(self.world, str) else None


def parse_world(text: str) -> int | str:
    """`--ddp 8`, or a symbol (`--fsdp W`) that fit and sweep substitute."""
    value = text.strip()
    if value.isdigit():
        return int(value)
    if value.isidentifier() and value.isupper():
        return value
    raise MemtraceError(f"expected a world size (8) or a symbol (W), got {text!r}")


def parallel_from_flags(
    ddp: int | str | None,
    fsdp: int | str | None,
    rank: int,
    bucket_cap_mb: float | None,
    reshard_after_forward: str,
    fsdp_wrap: tuple[str, ...],
    fsdp_param_dtype: str | None,
    fsdp_reduce_dtype: str | None,
    cpu_offload: bool,
) -> Parallel | None:
    """The CLI flags as one Parallel; None without --ddp or --fsdp (the engines' options are then refused)."""
    if ddp is not None and fsdp is not None:
        raise MemtraceError("--ddp and --fsdp are two engines: give one")
    if ddp is None and fsdp is None:
        given = {
            "--rank": rank != 0,
            "--bucket-cap-mb": bucket_cap_mb is not None,
            "--reshard-after-forward": reshard_after_forward != "yes",
            "--fsdp-wrap": bool(fsdp_wrap),
            "--fsdp-param-dtype": fsdp_param_dtype is not None,
            "--fsdp-reduce-dtype": fsdp_reduce_dtype is not None,
            "--cpu-offload": cpu_offload,
        }
        for flag, used in given.items():
            if used:
                raise MemtraceError(f"{flag} describes a data-parallel job: it needs --ddp N or --fsdp N")
        return None
    engine, world = ("ddp", ddp) if ddp is not None else ("fsdp", fsdp)
    assert world is not None
    return Parallel(
        engine,
        world,
        rank,
        bucket_cap_mb,
        parse_yes_no(reshard_after_forward, "--reshard-after-forward"),
        tuple(fsdp_wrap),
        fsdp_param_dtype,
        fsdp_reduce_dtype,
        cpu_offload,
    )


def parse_yes_no(text: str, flag: str) -> bool:
    value = text.strip().lower()
    if value in ("yes", "true", "1"):
        return True
    if value in ("no", "false", "0"):
        return False
    raise MemtraceError(f"{flag} takes yes or no, got {text!r}")

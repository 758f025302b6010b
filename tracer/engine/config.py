"""How to simulate (`Config`): the mode, the optimizer, the target device, the recipe and the step, each
checked before any simulation runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..core.assume import Policy
from ..core.errors import MemtraceError
from ..core.generation import GenerateSpec
from ..core.parallel import Parallel
from ..core.records import (
    InputSpec,
)
from ..core.specs import (
    LossSpec,
    OptimizerSpec,
)
from ..devices.cuda.allocator import AllocatorConfig
from ..devices.gpu import allocator_config
from ..engine.program import MODES
from ..engine.recipes import Recipe

StepFn = Callable[..., Any]


SDPA_BACKENDS = ("auto", "flash", "efficient", "cudnn", "math")


@dataclass(frozen=True)
class Config:
    """How to simulate: the mode, the optimizer, the target device, iterations, the recipe, and the step:
    memtrace's default step with its loss (`loss`, `free_output`), or the user's own `step` function."""

    mode: str = "train"
    optimizer: OptimizerSpec = field(default_factory=lambda: OptimizerSpec("adam"))
    device: str = "cuda"
    iterations: int = 2
    recipe: Recipe = field(default_factory=Recipe)
    loss: LossSpec | None = None  # None: auto
    free_output: bool = False
    step: str | StepFn | None = None
    alloc_conf: str | None = None  # the CUDA allocator's settings; None: PYTORCH_CUDA_ALLOC_CONF etc.
    arch: str | None = None  # the target GPU's compute capability; None: the default (an A100, sm80)
    sdpa_backend: str = "auto"  # --sdpa-backend
    cudnn_version: int | None = None  # --cudnn-version, as cuDNN's integer (91002 for 9.10.2)
    parallel: Parallel | None = None  # --ddp N / --fsdp N: one rank of a data-parallel job
    cuda_version: str | None = None  # the CUDA runtime PyTorch was built with (12.8); None: the default
    repeat_layers: int = 0  # --repeat-layers K: extrapolate a stack of identical layers from K, K+1, K+2
    assume: tuple[tuple[str, str], ...] = ()  # --assume KEY=VALUE: the data-dependent values (assume.py)
    generate: GenerateSpec | None = None  # --mode generate: what generate() is asked (core/generation.py)
    # the allocator's settings as parsed once, when the Config is made (None off the cuda target)
    allocator: AllocatorConfig | None = field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise MemtraceError(f"unknown mode {self.mode!r} ({', '.join(MODES)})")
        if self.device not in ("cpu", "cuda"):
            raise MemtraceError(f"unknown device {self.device!r} (cpu or cuda)")
        if self.iterations < 1:
            raise MemtraceError("iterations must be at least 1")
        if self.repeat_layers < 0:
            raise MemtraceError("--repeat-layers must be at least 1 (0: off)")
        if self.step is not None:
            _refuse_with_step(self)
        _check_generate(self)
        if self.sdpa_backend not in SDPA_BACKENDS:
            raise MemtraceError(f"unknown --sdpa-backend {self.sdpa_backend!r} ({', '.join(SDPA_BACKENDS)})")
        _check_loss(self.loss)
        object.__setattr__(self, "allocator", _check_gpu_flags(self))
        Policy(self.assume)  # a bad --assume fails before any simulation

    @property
    def targets(self) -> tuple[InputSpec, ...]:
        """The `--target` tensors of a user loss."""
        return self.loss.targets if self.loss is not None else ()

    def step_text(self) -> str:
        if self.step is None:
            return "default" if self.generate is None else self.generate.text()
        return (
            self.step if isinstance(self.step, str) else getattr(self.step, "__qualname__", repr(self.step))
        )

    def loss_text(self) -> str:
        if self.step is not None or self.mode != "train":
            return ""
        return (self.loss or LossSpec()).text()


def _check_loss(loss: LossSpec | None) -> None:
    if loss is None:
        return
    if loss.targets and not loss.is_function:
        raise MemtraceError(f"--target is for --loss FILE.py:FUNC; --loss {loss.name} makes its own targets")
    if loss.class_dim is not None and loss.name != "ce":
        raise MemtraceError("--loss-class-dim is for --loss ce")


def _check_gpu_flags(config: Config) -> AllocatorConfig | None:
    """The GPU's settings need the GPU target; the allocator's are parsed before any simulation (and kept:
    the placement uses them)."""
    if config.device != "cuda":
        given = {
            "--alloc-conf": config.alloc_conf is not None,
            "--sdpa-backend": config.sdpa_backend != "auto",
            "--cudnn-version": config.cudnn_version is not None,
        }
        for flag, used in given.items():
            if used:
                raise MemtraceError(f"{flag} describes the GPU: it needs --device cuda")
        return None
    return allocator_config(config.alloc_conf)


def _refuse_with_step(config: Config) -> None:
    """A user's step is their own code: flags that would change it are refused, one line each."""
    loss = config.loss
    changes = {
        "--target": loss is not None and bool(loss.targets),
        "--loss-class-dim": loss is not None and loss.class_dim is not None,
        "--loss": loss is not None,
        "--amp": config.recipe.amp is not None,
        "--accumulate": config.recipe.accumulate > 1,
        "--free-output": config.free_output,
    }
    for flag, given in changes.items():
        if given:
            raise MemtraceError(
                f"{flag} would change your own step: with --step, write it in the step function"
            )


def _check_generate(config: Config) -> None:
    """`--mode generate` needs `--max-new-tokens` (unless the step is the user's own loop); the training
    flags are refused with it, and the generation flags without it, one line each."""
    if config.mode != "generate":
        if config.generate is not None:
            raise MemtraceError(
                "--max-new-tokens (and --kv-cache, --sample, --num-beams) need --mode generate"
            )
        return
    if config.step is not None:
        if config.generate is not None:
            raise MemtraceError(
                "--max-new-tokens would change your own step: with --step, your step is the generation loop"
            )
    elif config.generate is None:
        raise MemtraceError("--mode generate needs --max-new-tokens N (the new tokens generate() makes)")
    changes = {
        "--optimizer": config.optimizer != OptimizerSpec("adam"),
        "--accumulate": config.recipe.accumulate > 1,
        "--loss": config.loss is not None,
        "--ddp/--fsdp": config.parallel is not None,
        "--free-output": config.free_output,
    }
    for flag, given in changes.items():
        if given:
            raise MemtraceError(f"{flag} is for training: --mode generate runs no backward")

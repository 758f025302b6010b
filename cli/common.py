"""Shared CLI pieces: parameter types that fail with one line, and the engine's options."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from memtrace.tracer import specs
from memtrace.tracer.specs import SpecError

F = TypeVar("F", bound=Callable[..., Any])


class _SpecType(click.ParamType):  # type: ignore[type-arg]
    parser: Callable[[str], Any]

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return type(self).parser(value)
        except SpecError as exc:
            self.fail(str(exc), param, ctx)


class InputType(_SpecType):
    name = "SHAPE[:DTYPE]"
    parser = staticmethod(specs.parse_input)


class GpuType(_SpecType):
    name = "SIZE|NAME"
    parser = staticmethod(specs.parse_gpu)


class OptimizerType(_SpecType):
    name = "NAME[:k=v,...]"
    parser = staticmethod(specs.parse_optimizer)


class HeadroomType(_SpecType):
    name = "SIZE|PERCENT"
    parser = staticmethod(specs.parse_headroom)


class KeyValueType(_SpecType):
    name = "KEY=VALUE"
    parser = staticmethod(specs.parse_kv)


def engine_options(fn: F) -> F:
    """The options every simulating command takes."""
    decorators = [
        click.argument("model"),
        click.option(
            "--input",
            "inputs",
            multiple=True,
            type=InputType(),
            help="Input shape, e.g. 1x3x1080x1920 or 4x128:int64; repeat for several inputs.",
        ),
        click.option(
            "--arg",
            "args",
            multiple=True,
            type=KeyValueType(),
            help="Keyword argument for the builder, key=value; repeatable.",
        ),
        click.option("--mode", type=click.Choice(["train", "infer"]), default="train", show_default=True),
        click.option(
            "--device",
            type=click.Choice(["cuda", "cpu"]),
            default="cuda",
            show_default=True,
            help="Whose allocator to model.",
        ),
        click.option(
            "--optimizer",
            type=OptimizerType(),
            default="adam",
            show_default=True,
            help="Any torch.optim class (adam, adamw, sgd:momentum=0.9, ...), FILE.py:Class, or none.",
        ),
        click.option("--amp", default=None, help="Mixed precision: bf16 or fp16 autocast."),
        click.option(
            "--dtype",
            "param_dtype",
            default=None,
            help="Cast the parameters (pure low precision): bf16, fp16.",
        ),
        click.option(
            "--checkpoint",
            multiple=True,
            help="Activation-checkpoint the outermost modules matching this glob; repeatable.",
        ),
        click.option(
            "--accumulate",
            type=int,
            default=1,
            show_default=True,
            help="Micro-batches (the --input batch) accumulated per optimizer step.",
        ),
    ]
    for deco in reversed(decorators):
        fn = deco(fn)
    return fn


def make_request(
    model: str,
    inputs: tuple[Any, ...],
    args: tuple[tuple[str, Any], ...],
    mode: str,
    device: str,
    optimizer: Any,
    amp: str | None,
    param_dtype: str | None,
    checkpoint: tuple[str, ...],
    accumulate: int,
    gpu: Any = None,
    headroom: Any = None,
) -> Any:
    """The engine request the common options describe (imports torch)."""
    from memtrace.tracer.recipes import Recipe
    from memtrace.tracer.simulate import Config, Request

    recipe = Recipe(amp, param_dtype, tuple(checkpoint), accumulate)
    config = Config(mode, optimizer, device, recipe=recipe)
    return Request(model, tuple(inputs), tuple(args), config, gpu, headroom)

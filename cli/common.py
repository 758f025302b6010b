"""Shared CLI pieces: parameter types that fail with one line, and the engine's options."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from memtrace.tracer.core import specs
from memtrace.tracer.core.errors import MemtraceError
from memtrace.tracer.core.generation import is_symbol
from memtrace.tracer.core.specs import OptionError, SpecError

if TYPE_CHECKING:
    from memtrace.tracer.simulate import Request

F = TypeVar("F", bound=Callable[..., Any])


class _SpecType(click.ParamType):  # type: ignore[type-arg]
    parser: Callable[[str], Any]

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return type(self).parser(value)
        except OptionError as exc:  # the message names the option: `--gpu 24: a size needs a unit ...`
            raise click.UsageError(str(exc), ctx) from None
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


class LossType(_SpecType):
    name = "auto|sum|mean|ce|mse|FILE.py:FUNC"
    parser = staticmethod(specs.parse_loss)


class StepType(_SpecType):
    name = "FILE.py:FUNC"
    parser = staticmethod(lambda text: specs.parse_target(text, "--step").text())


class CudnnType(_SpecType):
    name = "VERSION"
    parser = staticmethod(specs.parse_cudnn_version)


class HeadroomType(_SpecType):
    name = "SIZE|PERCENT"
    parser = staticmethod(specs.parse_headroom)


class ToleranceType(_SpecType):
    name = "PERCENT|FRACTION"
    parser = staticmethod(specs.parse_tolerance)


class WorldType(click.ParamType):  # type: ignore[type-arg]
    name = "N|W"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from memtrace.tracer.core.parallel import parse_world

        if not isinstance(value, str):
            return value
        try:
            return parse_world(value)
        except MemtraceError as exc:
            self.fail(str(exc), param, ctx)


class AssumeType(click.ParamType):  # type: ignore[type-arg]
    name = "KEY=VALUE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from memtrace.tracer.core.assume import parse_assume

        if not isinstance(value, str):
            return value
        try:
            return parse_assume(value)
        except MemtraceError as exc:
            self.fail(str(exc), param, ctx)


class KeyValueType(_SpecType):
    name = "KEY=VALUE"
    parser = staticmethod(specs.parse_kv)


class TokensType(click.ParamType):  # type: ignore[type-arg]
    """`--max-new-tokens`: a positive integer, or a symbol (`N`) for fit and sweep."""

    name = "N"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.isdigit() and int(text) >= 1:
            return int(text)
        if is_symbol(text):
            return text
        self.fail(f"{value!r}: a positive integer, or a symbol such as N (fit and sweep)", param, ctx)


class GenerateArgType(_SpecType):
    name = "KEY=VALUE"

    @staticmethod
    def parser(text: str) -> Any:
        return specs.parse_kv(text, "--generate-arg")


def engine_options(fn: F) -> F:
    """The options every simulating command takes."""
    decorators = [
        click.argument("model"),
        click.option(
            "--input",
            "inputs",
            multiple=True,
            type=InputType(),
            help="Input shape, e.g. 1x3x1080x1920 or 4x128:int64, or a keyword input input_ids=4x512:int64; "
            "repeat for several inputs.",
        ),
        click.option(
            "--arg",
            "args",
            multiple=True,
            type=KeyValueType(),
            help="Keyword argument for the builder, key=value; repeatable.",
        ),
        click.option(
            "--mode",
            type=click.Choice(["train", "infer", "no_grad", "generate"]),
            default="train",
            show_default=True,
            help="train: forward, loss, backward, optimizer step; infer: the forward under "
            "torch.inference_mode() in eval mode; no_grad: the same under torch.no_grad(); generate: "
            "Hugging Face's generate() on the inputs (the prompt), with --max-new-tokens.",
        ),
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
        click.option(
            "--amp", type=click.Choice(["bf16", "fp16"]), default=None, help="Mixed precision: autocast."
        ),
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
            type=click.IntRange(min=1),
            default=1,
            show_default=True,
            help="Micro-batches (the --input batch) accumulated per optimizer step.",
        ),
        click.option(
            "--compile",
            "compile_model",
            is_flag=True,
            default=False,
            help="torch.compile the model, as the Hugging Face Trainer's torch_compile does; simulated as "
            "inductor plans the compiled step's buffers.",
        ),
        click.option(
            "--compile-mode",
            type=click.Choice(["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]),
            default=None,
            help="torch.compile's mode (implies --compile).  [default: default]",
        ),
        click.option(
            "--compile-backend",
            type=click.Choice(["inductor", "aot_eager", "eager"]),
            default=None,
            help="torch.compile's backend (implies --compile).  [default: inductor]",
        ),
        click.option(
            "--repeat-layers",
            type=click.IntRange(min=0),
            default=0,
            help="Simulate the model's stack of identical layers (a ModuleList, e.g. model.layers) with K, "
            "K+1 and K+2 of them and extrapolate to its full depth, checked affine; 0 (default): off.",
        ),
        click.option(
            "--loss",
            type=LossType(),
            default=None,
            help="The loss: auto (the output's own .loss, else the sum of the outputs), sum, mean, ce "
            "(cross entropy), mse, or FILE.py:FUNC called as FUNC(output, *targets).  [default: auto]",
        ),
        click.option(
            "--loss-class-dim",
            "loss_class_dim",
            type=int,
            default=None,
            help="The class dimension for --loss ce (default: the last for 2-D and 3-D outputs, else 1).",
        ),
        click.option(
            "--target",
            "targets",
            multiple=True,
            type=InputType(),
            help="A target tensor for --loss FILE.py:FUNC, e.g. 4x512:int64; repeatable.",
        ),
        click.option(
            "--free-output",
            is_flag=True,
            help="Drop the model's output before backward (the model(x).sum().backward() style).",
        ),
        click.option(
            "--alloc-conf",
            "alloc_conf",
            default=None,
            metavar="OPTIONS",
            help="The CUDA caching allocator's settings as PyTorch reads them "
            "(max_split_size_mb:128,expandable_segments:True); default: PYTORCH_CUDA_ALLOC_CONF etc.",
        ),
        click.option(
            "--sdpa-backend",
            "sdpa_backend",
            type=click.Choice(["auto", "flash", "efficient", "cudnn", "math"]),
            default="auto",
            show_default=True,
            help="On cuda, the scaled-dot-product-attention kernel: auto follows PyTorch's choice for the "
            "GPU (sdp_utils.cpp); a name enables only that one, as sdpa_kernel([...]) does.",
        ),
        click.option(
            "--cudnn-version",
            "cudnn_version",
            type=CudnnType(),
            default=None,
            help="The runtime cuDNN the GPU would use, e.g. 9.10.2 (default 9.10.2): newer than 9.15 puts "
            "cuDNN attention first on sm 9.x/10.x.",
        ),
        click.option(
            "--assume",
            multiple=True,
            type=AssumeType(),
            help="A data-dependent value to assume, repeatable: moe.routing=balanced|worst, "
            "moe.tokens=N,N,..[;N,N,..] (tokens per expert, per MoE layer), nms.keep=F|N,N,.., "
            "nonzero=all|N,N,.., item=V,V,.., check=pass. Counts and values are per call of the step "
            "(steps apart by /); `memtrace verify` prints those of the real step.",
        ),
        click.option(
            "--hf-args",
            "hf_args",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help="A Hugging Face TrainingArguments-like JSON (or YAML) file: per_device_train_batch_size, "
            "max_length, gradient_accumulation_steps, bf16/fp16, gradient_checkpointing, optim, as the "
            "flags they mean; the command line's own flags win only where they agree.",
        ),
        click.option(
            "--step",
            type=StepType(),
            default=None,
            help="Your own step function, FILE.py:FUNC, called as FUNC(model, inputs, optimizer).",
        ),
        *_parallel_options(),
        *_generate_options(),
    ]
    for deco in reversed(decorators):
        fn = deco(fn)
    return fn


def _parallel_options() -> list[Callable[[F], F]]:
    """--ddp / --fsdp and their engines' options (tracer/core/parallel.py)."""
    return [
        click.option(
            "--ddp", type=WorldType(), default=None, help="One rank of DistributedDataParallel on N ranks."
        ),
        click.option(
            "--bucket-cap-mb",
            "bucket_cap_mb",
            type=click.FloatRange(min=0, min_open=True),
            default=None,
            help="DDP's bucket cap in MB (default: PyTorch's, 25).",
        ),
        click.option(
            "--fsdp", type=WorldType(), default=None, help="One rank of FSDP2 (fully_shard) on N ranks."
        ),
        click.option(
            "--reshard-after-forward",
            "reshard_after_forward",
            type=click.Choice(["yes", "no"]),
            default="yes",
            show_default=True,
            help="FSDP2: free the unsharded parameters after forward (all-gather again in backward).",
        ),
        click.option(
            "--fsdp-wrap",
            "fsdp_wrap",
            multiple=True,
            help=(
                "FSDP2: fully_shard the outermost modules matching this glob (the root always); repeatable. "
                "Default auto: each _no_split_modules block (HF models), else each child of the largest "
                "ModuleList; root: the root alone."
            ),
        ),
        click.option(
            "--fsdp-param-dtype",
            "fsdp_param_dtype",
            type=click.Choice(["bf16", "fp16", "fp32"]),
            default=None,
            help="FSDP2's MixedPrecisionPolicy param_dtype (compute in it; fp32 sharded parameters).",
        ),
        click.option(
            "--fsdp-reduce-dtype",
            "fsdp_reduce_dtype",
            type=click.Choice(["bf16", "fp16", "fp32"]),
            default=None,
            help="FSDP2's MixedPrecisionPolicy reduce_dtype (the gradients' reduce-scatter).",
        ),
        click.option("--cpu-offload", "cpu_offload", is_flag=True, help="FSDP2's CPUOffloadPolicy."),
        click.option(
            "--rank",
            type=click.IntRange(min=0),
            default=0,
            show_default=True,
            help="The rank simulated (ranks differ where shards are uneven).",
        ),
    ]


def _generate_options() -> list[Callable[[F], F]]:
    """--mode generate's options (tracer/core/generation.py)."""
    return [
        click.option(
            "--max-new-tokens",
            "max_new_tokens",
            type=TokensType(),
            default=None,
            help="--mode generate: the new tokens generate() makes (required; EOS cannot end it early on "
            "meta, so the figure is an upper bound); a symbol (N) for fit and sweep.",
        ),
        click.option(
            "--kv-cache",
            "kv_cache",
            type=click.Choice(["dynamic", "static", "offloaded", "offloaded_static", "quantized"]),
            default=None,
            help="--mode generate: Hugging Face's cache_implementation (default: the model's own).",
        ),
        click.option(
            "--sample",
            is_flag=True,
            help="--mode generate: do_sample with the generation config's top-k/top-p.",
        ),
        click.option(
            "--num-beams",
            "num_beams",
            type=click.IntRange(min=1),
            default=1,
            show_default=True,
            help="--mode generate: beam search with K beams.",
        ),
        click.option(
            "--generate-arg",
            "generate_args",
            multiple=True,
            type=GenerateArgType(),
            help="--mode generate: another generate() keyword, key=value (parsed as --arg's); repeatable.",
        ),
    ]


def gpu_option(required: bool = False) -> Callable[[F], F]:
    return click.option(
        "--gpu",
        type=GpuType(),
        required=required,
        help="A GPU preset (rtx4070, a100-80gb, h100; a model number: 4090; see `memtrace gpus`) or a size "
        "with a unit (12GB, 24GiB).",
    )


def headroom_option(fn: F) -> F:
    return click.option(
        "--headroom",
        type=HeadroomType(),
        default="auto",
        show_default=True,
        help="Memory kept free on the GPU: 0, 1GB, 5%; auto = a 512 MiB CUDA-context estimate (+ 5% of the "
        "GPU for fragmentation on --device cpu, where reserved memory is not modelled).",
    )(fn)


def file_option(*decls: str, text: str) -> Callable[[F], F]:
    """An option naming one file (not a directory), None when absent."""
    return click.option(*decls, type=click.Path(dir_okay=False, path_type=Path), default=None, help=text)


def plot_option(text: str) -> Callable[[F], F]:
    """--plot FILE.png|svg."""
    return file_option("--plot", "plot_file", text=text)


def make_request(
    model: str, inputs: tuple[Any, ...], param_dtype: str | None = None, **options: Any
) -> Request:
    """The engine request the common options describe (imports torch): `simulate.request` of the parsed
    flags (`--dtype` is its `dtype`)."""
    from memtrace.tracer.simulate import request

    hf_file = options.pop("hf_args", None)
    if hf_file is not None:
        from memtrace.cli.hf_args import apply_hf_args

        options = apply_hf_args(hf_file, {"inputs": inputs, **options})
        inputs = options.pop("inputs")
    return request(model, inputs, dtype=param_dtype, **options)


@contextmanager
def user_stdout_to_stderr(enabled: bool) -> Iterator[None]:
    """While user code runs (builder, step, loss), what it prints goes to stderr, so that machine-readable
    output on stdout stays the only thing there."""
    if not enabled:
        yield
        return
    with redirect_stdout(sys.stderr):
        yield


def writable(path: Path | None, what: str, suffixes: tuple[str, ...] = ()) -> None:
    """Refuse an output path before any simulation runs: a wrong suffix or a missing directory."""
    if path is None:
        return
    if suffixes and path.suffix not in suffixes:
        raise MemtraceError(f"{what} {path}: the suffix must be one of {', '.join(suffixes)}")
    parent = path.resolve().parent
    if not parent.is_dir():
        raise MemtraceError(f"{what} {path}: directory {parent} does not exist")

"""`--hf-args FILE`: a Hugging Face `TrainingArguments`-like set of keys (TRL's `SFTConfig` too) as the
memtrace flags that simulate the same step. Pure: no torch; the CLI merges the flags (cli/common.py).

| key | flag |
|---|---|
| `per_device_train_batch_size` (the Trainer's default 8) | the batch of `--input` |
| `max_length` (TRL; its older name `max_seq_length`) | the sequence of `--input` |
| `gradient_accumulation_steps` | `--accumulate` |
| `bf16` / `fp16` | `--amp bf16` / `--amp fp16` (autocast over the model's own parameters) |
| `gradient_checkpointing` | `--checkpoint auto` (each decoder layer, as `gradient_checkpointing_enable`) |
| `optim` (the Trainer's default `adamw_torch_fused`) | `--optimizer hf:NAME` |
| `torch_compile` | `--compile` (the Trainer's `torch.compile(model)`) |
| `torch_compile_mode`, `torch_compile_backend` | `--compile-mode`, `--compile-backend` (each implies it) |

Without `--input` the batch is `input_ids=BxS:int64` and `labels=BxS:int64` (the Trainer's causal-LM
batch: the model computes its own loss). Keys that change no memory (the learning rate, logging, saving)
are read and dropped; any other key is listed as not read.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import hf_optim
from .errors import MemtraceError

TRAINER_BATCH = 8  # TrainingArguments.per_device_train_batch_size
NO_MEMORY = frozenset(  # keys read and dropped: they change no allocation of the step
    (
        "output_dir",
        "run_name",
        "learning_rate",
        "lr_scheduler_type",
        "warmup_ratio",
        "warmup_steps",
        "weight_decay",
        "adam_beta1",
        "adam_beta2",
        "adam_epsilon",
        "num_train_epochs",
        "max_steps",
        "seed",
        "logging_dir",
        "logging_steps",
        "logging_strategy",
        "save_steps",
        "save_strategy",
        "save_total_limit",
        "eval_steps",
        "eval_strategy",
        "evaluation_strategy",
        "report_to",
        "push_to_hub",
        "dataset_text_field",
    )
)
READ = frozenset(
    (
        "per_device_train_batch_size",
        "max_length",
        "max_seq_length",
        "gradient_accumulation_steps",
        "bf16",
        "fp16",
        "gradient_checkpointing",
        "optim",
        "torch_compile",
        "torch_compile_mode",
        "torch_compile_backend",
    )
)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")


@dataclass(frozen=True)
class HfArgs:
    """What the file asks: flag values by the CLI's parameter names (`optimizer` as `hf:NAME` text), each
    with the `key=value` that asked it, the batch and sequence of the inputs, and the keys not read."""

    flags: dict[str, Any] = field(default_factory=dict)
    asked_by: dict[str, str] = field(default_factory=dict)
    batch: int = TRAINER_BATCH
    sequence: int | None = None
    unread: tuple[str, ...] = ()


def read_file(path: Path) -> dict[str, Any]:
    """The file's keys: JSON, or YAML (`.yaml`/`.yml`) when PyYAML is installed."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise MemtraceError(f"--hf-args {path}: {exc.strerror or exc}") from exc
    if path.suffix in (".yaml", ".yml"):
        if importlib.util.find_spec("yaml") is None:
            raise MemtraceError(f"--hf-args {path}: YAML needs PyYAML (pip install pyyaml), or give JSON")
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise MemtraceError(f"--hf-args {path}: not YAML ({str(exc).splitlines()[0]})") from exc
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MemtraceError(f"--hf-args {path}: not JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(data, dict):
        raise MemtraceError(f"--hf-args {path}: expected a mapping of TrainingArguments keys")
    return data


def hf_args(data: dict[str, Any], where: str) -> HfArgs:
    """The flags `data` asks for; `where` names the file in errors."""
    out = HfArgs(unread=tuple(sorted(k for k in data if k not in READ and k not in NO_MEMORY)))
    _compile(out, data, where)
    if data.get("bf16") and data.get("fp16"):
        raise MemtraceError(f"--hf-args {where}: bf16 and fp16 are both true: give one")
    for key in ("bf16", "fp16"):
        if data.get(key):
            _ask(out, "amp", key, f"{key}=true")
    accumulate = _positive(data, "gradient_accumulation_steps", where)
    if accumulate is not None:
        _ask(out, "accumulate", accumulate, f"gradient_accumulation_steps={accumulate}")
    if data.get("gradient_checkpointing"):
        _ask(out, "checkpoint", ("auto",), "gradient_checkpointing=true")
    optim = data.get("optim", hf_optim.DEFAULT)
    if optim not in hf_optim.HF_OPTIMIZERS:
        raise MemtraceError(f"--hf-args {where}: unknown optim {optim!r} (known: {hf_optim.known()})")
    asked = f"optim={optim}" if "optim" in data else f"the Trainer's default optim {optim}"
    _ask(out, "optimizer", hf_optim.PREFIX + optim, asked)
    batch = _positive(data, "per_device_train_batch_size", where)
    lengths = {k: _positive(data, k, where) for k in ("max_length", "max_seq_length")}
    given = {v for v in lengths.values() if v is not None}
    if len(given) > 1:
        raise MemtraceError(f"--hf-args {where}: max_length and max_seq_length differ: give one")
    return HfArgs(out.flags, out.asked_by, batch or TRAINER_BATCH, given.pop() if given else None, out.unread)


def _compile(out: HfArgs, data: dict[str, Any], where: str) -> None:
    """`torch_compile`; its mode and backend turn it on, as `TrainingArguments.__post_init__` does."""
    for key, flag, known in (
        ("torch_compile_mode", "compile_mode", COMPILE_MODES),
        ("torch_compile_backend", "compile_backend", COMPILE_BACKENDS),
    ):
        value = data.get(key)
        if value is None:
            continue
        if value not in known:
            raise MemtraceError(f"--hf-args {where}: {key}={value!r} is not one of {', '.join(known)}")
        _ask(out, flag, value, f"{key}={value}")
    if data.get("torch_compile") or "compile_mode" in out.flags or "compile_backend" in out.flags:
        _ask(
            out,
            "compile_model",
            True,
            "torch_compile=true" if data.get("torch_compile") else "torch_compile_*",
        )


def _ask(out: HfArgs, flag: str, value: Any, asked_by: str) -> None:
    out.flags[flag] = value
    out.asked_by[flag] = asked_by


def _positive(data: dict[str, Any], key: str, where: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MemtraceError(f"--hf-args {where}: {key} must be a positive integer, got {value!r}")
    return value

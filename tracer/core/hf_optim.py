"""Hugging Face's `optim` names (`--optimizer hf:NAME`), as the Trainer maps them to an optimizer.

Read from transformers 5.x (`trainer_optimizer.py`: `_OPTIMIZER_HANDLERS`, `_get_adamw_torch`,
`_get_bitsandbytes_optimizer`, `_get_adafactor`, `_get_sgd`; `training_args.py`: `OptimizerNames` and the
defaults). The Trainer passes `lr=args.learning_rate` (5e-5 by default) to every optimizer; the Adam family
also gets `betas=(adam_beta1, adam_beta2)` and `eps=adam_epsilon`, whose defaults (0.9, 0.999, 1e-8) are the
classes' own, so they are not repeated here. `adamw_torch_fused` adds `fused=True`; the bitsandbytes names
pick the class by the name (`adam` -> `AdamW`, `lion` -> `Lion`) with `optim_bits` 8 when the name holds
`8bit` (else 32) and `is_paged` when it holds `paged`; `adafactor` is transformers' own `Adafactor` with
`scale_parameter=False, relative_step=False`. The Trainer's default `optim` is `adamw_torch_fused` on
torch >= 2.8.

A bare name (`--optimizer adafactor`) keeps its meaning, a `torch.optim` class: `adafactor` and `hf:adafactor`
differ as they do between PyTorch and the Trainer. Pure: no torch.
"""

from __future__ import annotations

Value = bool | int | float | str | None
Kwargs = tuple[tuple[str, Value], ...]

PREFIX = "hf:"
LEARNING_RATE = 5e-5  # TrainingArguments.learning_rate
DEFAULT = "adamw_torch_fused"  # TrainingArguments.optim on torch >= 2.8


def _bnb(cls: str, name: str) -> tuple[str, Kwargs]:
    bits = 8 if "8bit" in name else 32
    return f"bitsandbytes.optim:{cls}", (("optim_bits", bits), ("is_paged", "paged" in name))


_BNB_NAMES = (
    ("AdamW", ("adamw_bnb_8bit", "adamw_8bit", "paged_adamw_32bit", "paged_adamw_8bit")),
    ("Lion", ("lion_32bit", "lion_8bit", "paged_lion_32bit", "paged_lion_8bit")),
)

HF_OPTIMIZERS: dict[str, tuple[str, Kwargs]] = {
    "adamw_torch": ("torch.optim:AdamW", ()),
    "adamw_torch_fused": ("torch.optim:AdamW", (("fused", True),)),
    **{name: _bnb(cls, name) for cls, names in _BNB_NAMES for name in names},
    "adafactor": (
        "transformers.optimization:Adafactor",
        (("scale_parameter", False), ("relative_step", False)),
    ),
    "sgd": ("torch.optim:SGD", ()),
    "adagrad": ("torch.optim:Adagrad", ()),
    "rmsprop": ("torch.optim:RMSprop", ()),
}


def is_hf(name: str) -> bool:
    return name.startswith(PREFIX)


def known() -> str:
    return ", ".join(sorted(HF_OPTIMIZERS))


def hf_optimizer(name: str) -> tuple[str, Kwargs]:
    """The class (`module:Class`) and the Trainer's keyword arguments for `hf:NAME` (or `NAME`); KeyError for
    a name the Trainer mapping here does not hold."""
    key = name.removeprefix(PREFIX)
    cls, kwargs = HF_OPTIMIZERS[key]
    return cls, (("lr", LEARNING_RATE), *kwargs)

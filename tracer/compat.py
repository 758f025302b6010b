"""Compatibility with libraries whose code reads tensor values unless it knows it is being traced.

Hugging Face transformers skips its data-dependent checks (packed-sequence detection, all-ones masks) for
fake tensors, as under torch.compile; a meta tensor has no values either, so while simulating it counts as
one. Loaded only if transformers is already imported by the user's builder.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import torch

from memtrace.tracer.devices import patch


@contextlib.contextmanager
def _hf_meta_is_fake() -> Iterator[None]:
    module = sys.modules.get("transformers.utils.import_utils")
    original = getattr(module, "is_fake_tensor", None)
    if module is None or original is None:
        yield
        return

    def is_fake_tensor(tensor: Any) -> bool:
        return bool(original(tensor)) or (isinstance(tensor, torch.Tensor) and tensor.device.type == "meta")

    module.is_fake_tensor = is_fake_tensor  # type: ignore[attr-defined]
    try:
        yield
    finally:
        module.is_fake_tensor = original  # type: ignore[attr-defined]


patch("cpu", "hf_meta_is_fake")(_hf_meta_is_fake)
patch("cuda", "hf_meta_is_fake")(_hf_meta_is_fake)

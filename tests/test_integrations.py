"""The trainer integrations on the CPU: a tiny GPT-2 trained a few steps with the Hugging Face `Trainer`
(the memtrace keys reach `state.log_history`, the prediction is `memtrace.simulate`'s for the Trainer's step),
and a small Lightning module (skipped without Lightning). Measurements are injected: the CPU allocator has no
cheap peak reading."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import memtrace
from memtrace.monitor import METRIC_KEYS, Reading
from memtrace.tracer.engine.recipes import Recipe
from memtrace.tracer.real.running import first_batch


def _readings(*peaks: int) -> Iterator[Reading]:
    return iter(Reading(p, 2 * p) for p in peaks)


def _gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2,
        n_embd=64,
        n_head=4,
        vocab_size=256,
        n_positions=32,
        use_cache=False,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(config)


def _tokens(n: int = 8, length: int = 16) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(0, 256, (length,), generator=g) for _ in range(n)]
    return [{"input_ids": r, "labels": r.clone()} for r in rows]


def test_trainer_logs_the_prediction_beside_the_measurement(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from memtrace.integrations.transformers import MemtraceCallback

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to=[],
        max_steps=2,
        logging_steps=1,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(model=_gpt2(), args=args, train_dataset=_tokens())
    readings = _readings(1_000_000, 1_100_000)
    callback = MemtraceCallback(measure=lambda: next(readings), output=tmp_path / "monitor.json")
    callback.install(trainer)
    assert trainer.callback_handler.callbacks[0] is callback  # ahead of the reporting callbacks
    trainer.train()

    expected = memtrace.simulate(
        _gpt2(),
        {"input_ids": "2x16:int64", "labels": "2x16:int64"},
        optimizer="adamw:lr=5e-05,fused=True",
        device="cpu",
        recipe=Recipe(accumulate=2),
        free_output=True,
    )
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in logged] == [1, 2]
    assert [h[METRIC_KEYS[0]] for h in logged] == [expected.all_steps_peak_bytes, expected.peak_bytes]
    assert [h[METRIC_KEYS[1]] for h in logged] == [1_000_000, 1_100_000]
    assert [h[METRIC_KEYS[2]] for h in logged] == [2_000_000, 2_200_000]
    out = capsys.readouterr().out
    assert "memtrace: predicted peak" in out and "fits this machine's RAM" in out
    assert (tmp_path / "monitor.json").exists()


def _checkpointed(model: Any) -> Any:
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    return model


def test_trainer_settings_are_read(capsys: pytest.CaptureFixture[str]) -> None:
    """bf16, accumulation and the activation checkpointing the Trainer enabled on the model."""
    pytest.importorskip("transformers")
    from memtrace.integrations.transformers import MemtraceCallback

    model = _checkpointed(_gpt2())
    loader = torch.utils.data.DataLoader(_tokens(), batch_size=4)
    args = argparse.Namespace(bf16=True, fp16=False, gradient_accumulation_steps=3, logging_steps=5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    callback = MemtraceCallback(log=None)
    callback.on_train_begin(args, None, None, model=model, optimizer=optimizer, train_dataloader=loader)
    assert callback.monitor is not None and callback.monitor.result is not None
    result = callback.monitor.result
    checkpointed = _checkpointed(_gpt2())
    inputs = {"input_ids": "4x16:int64", "labels": "4x16:int64"}
    expected = memtrace.simulate(
        checkpointed,
        inputs,
        optimizer="sgd:lr=0.1,momentum=0.9",
        device="cpu",
        recipe=Recipe("bf16", accumulate=3),
        free_output=True,
    )
    assert result.recipe == "amp bf16; accumulate 3" and result.peak_bytes == expected.peak_bytes
    assert any(p.phase.value == "recompute" and p.bytes for p in result.phases)


def test_the_first_batch_leaves_the_random_state() -> None:
    loader = torch.utils.data.DataLoader(list(range(32)), batch_size=4, shuffle=True)
    before = torch.get_rng_state()
    batch = first_batch(loader)
    assert torch.equal(torch.get_rng_state(), before) and batch.shape == (4,)


def _user_step(model: Any, inputs: Any, optimizer: Any) -> None:
    """Lightning's automatic optimization for one batch, as a user would write it for memtrace.simulate."""
    loss = model.training_step(inputs, 0)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def test_lightning_logs_the_prediction_beside_the_measurement(capsys: pytest.CaptureFixture[str]) -> None:
    lightning = pytest.importorskip("lightning", reason="lightning is not installed")
    from memtrace.integrations.lightning import MemtraceCallback

    class Module(lightning.LightningModule):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = nn.functional.cross_entropy(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    data = torch.utils.data.TensorDataset(torch.randn(64, 32), torch.randint(0, 4, (64,)))
    readings = _readings(10_000, 20_000, 30_000)
    callback = MemtraceCallback(every=2, measure=lambda: next(readings))
    trainer = lightning.Trainer(
        max_steps=6,
        accelerator="cpu",
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Module(), torch.utils.data.DataLoader(data, batch_size=8))

    expected = memtrace.simulate(
        Module(), ["8x32", "8:int64"], optimizer="sgd:lr=0.1,momentum=0.9", device="cpu", step=_user_step
    )
    assert callback.monitor is not None
    rows = callback.monitor.history
    assert [r.step for r in rows] == [2, 4, 6]
    assert [r.predicted_peak_bytes for r in rows] == [expected.all_steps_peak_bytes] + [
        expected.peak_bytes
    ] * 2
    assert [r.measured_peak_bytes for r in rows] == [10_000, 20_000, 30_000]
    metrics = trainer.logged_metrics
    assert float(metrics[METRIC_KEYS[0]]) == expected.peak_bytes and float(metrics[METRIC_KEYS[1]]) == 30_000
    assert "memtrace: predicted peak" in capsys.readouterr().out

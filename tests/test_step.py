"""The user's step, held against the CPU allocator: the output held or freed, real losses, keyword inputs,
a user's own step function, inference under inference_mode and no_grad (issue: simulate the user's step)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from accuracy import compare, compare_config
from reference import measure
from zoo import ZOO_BY_NAME

from memtrace.tracer.core.errors import MemtraceError
from memtrace.tracer.core.records import Phase
from memtrace.tracer.core.specs import LossSpec, parse_input, parse_optimizer
from memtrace.tracer.engine.loader import make_inputs
from memtrace.tracer.engine.recipes import Recipe
from memtrace.tracer.simulate import Config, simulate

TOLERANCE = 0.001
REPO = Path(__file__).resolve().parent.parent


def _exact(cmp: object) -> None:
    error = cmp.error  # type: ignore[attr-defined]
    assert abs(error) <= TOLERANCE, f"predicted {cmp.predicted:,} vs measured {cmp.measured:,}"  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ["transformer_sdpa", "tied", "groupnorm_unet"])
def test_output_held_and_freed(name: str) -> None:
    held = compare(ZOO_BY_NAME[name], "train", "adam")
    freed = compare(ZOO_BY_NAME[name], "train", "adam", free_output=True)
    _exact(held)
    _exact(freed)
    assert held.predicted > freed.predicted  # the output lives through backward in a function-scoped step
    assert held.result.free_output is False and freed.result.free_output is True


@pytest.mark.parametrize(
    "name,loss",
    [
        ("transformer_sdpa", "ce"),  # a language model: (B, S, V) logits, the last dim the classes
        ("tied", "ce"),
        ("mlp", "ce"),  # a classifier: (N, C)
        ("groupnorm_unet", "ce"),  # segmentation: (N, C, H, W), dim 1
        ("mlp", "mse"),
        ("groupnorm_unet", "mse"),
        ("transformer_sdpa", "mean"),
    ],
)
def test_losses_match_the_allocator(name: str, loss: str) -> None:
    cmp = compare(ZOO_BY_NAME[name], "train", "adamw", loss=LossSpec(loss))
    _exact(cmp)
    assert cmp.result.loss.startswith(loss)


def test_cross_entropy_costs_what_the_sum_does_not() -> None:
    """Over a vocabulary the loss itself is large: log-softmax and its gradient are logits-sized."""
    summed = compare(ZOO_BY_NAME["transformer_sdpa"], "train", "sgd", free_output=True)
    ce = compare(ZOO_BY_NAME["transformer_sdpa"], "train", "sgd", loss=LossSpec("ce"), free_output=True)
    assert ce.measured > summed.measured and ce.predicted > summed.predicted


def test_ce_under_bf16_autocast_and_accumulation() -> None:
    recipe = Recipe(amp="bf16", accumulate=2)
    _exact(compare(ZOO_BY_NAME["transformer_sdpa"], "train", "adam", recipe, loss=LossSpec("ce")))


def test_loss_class_dim_override() -> None:
    cmp = compare(ZOO_BY_NAME["groupnorm_unet"], "train", "sgd", loss=LossSpec("ce", class_dim=-1))
    _exact(cmp)


def test_user_loss_function_with_targets(tmp_path: Path) -> None:
    path = tmp_path / "myloss.py"
    path.write_text(
        "import torch.nn.functional as F\ndef loss(out, target):\n    return F.smooth_l1_loss(out, target)\n"
    )
    spec = LossSpec(f"{path}:loss", (parse_input("64x10"),))
    config = Config("train", parse_optimizer("adam"), "cpu", loss=spec)
    case = ZOO_BY_NAME["mlp"]
    model = case.build()
    batch = make_inputs([parse_input("64x512")], "cpu", spec.targets)
    ref = measure(model, batch, config=config)
    res = simulate(case.build, ["64x512"], device="cpu", loss=spec)
    assert abs(res.peak_bytes - ref.peak) <= TOLERANCE * ref.peak, (res.peak_bytes, ref.peak)


def _hf_gpt2() -> object:
    pytest.importorskip("transformers")
    import importlib.util

    spec = importlib.util.spec_from_file_location("hf_gpt2_step", REPO / "benchmarks/models/hf_gpt2.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


HF_INPUTS = ["input_ids=2x64:int64", "attention_mask=2x64:int64", "labels=2x64:int64"]


def test_hf_causal_lm_with_named_inputs_and_its_own_loss() -> None:
    mod = _hf_gpt2()
    specs = [parse_input(s) for s in HF_INPUTS]
    config = Config("train", parse_optimizer("adamw"), "cpu")
    torch.manual_seed(0)
    ref = measure(mod.build(), make_inputs(specs, "cpu"), config=config)  # type: ignore[attr-defined]
    res = simulate(mod.build, HF_INPUTS, device="cpu", optimizer="adamw")  # type: ignore[attr-defined]
    assert abs(res.peak_bytes - ref.peak) <= TOLERANCE * ref.peak, (res.peak_bytes, ref.peak)
    assert [i.name for i in res.inputs] == ["input_ids", "attention_mask", "labels"]
    # the model computed its loss from `labels`: a real loss, not a sum of logits
    without = simulate(mod.build, HF_INPUTS[:2], device="cpu", optimizer="adamw")  # type: ignore[attr-defined]
    assert res.peak_bytes != without.peak_bytes


STEP = """
import torch
import torch.nn.functional as F

def step(model, inputs, optimizer):
    (ids,) = inputs
    with torch.autocast("cuda", dtype=torch.bfloat16):   # written for a GPU
        logits = model(ids.cuda())
        loss = F.cross_entropy(logits.float().flatten(0, 1), ids.flatten())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
"""


def _step_file(tmp_path: Path, text: str = STEP) -> str:
    path = tmp_path / "mystep.py"
    path.write_text(textwrap.dedent(text))
    return f"{path}:step"


def test_user_step_with_bf16_autocast_and_its_own_cross_entropy(tmp_path: Path) -> None:
    step = _step_file(tmp_path)
    config = Config("train", parse_optimizer("adam"), "cpu", step=step)
    cmp = compare_config(ZOO_BY_NAME["transformer_sdpa"], config)
    _exact(cmp)
    assert cmp.result.step == step and cmp.result.loss == ""
    phases = {p.phase for p in cmp.result.phases}
    assert {Phase.FORWARD, Phase.LOSS, Phase.BACKWARD, Phase.OPTIMIZER} <= phases
    plain = compare(ZOO_BY_NAME["transformer_sdpa"], "train", "adam", loss=LossSpec("ce"))
    assert cmp.predicted != plain.predicted  # autocast was honoured: bf16 activations


def test_user_step_through_the_api_with_a_function() -> None:
    import torch.nn.functional as F

    def step(
        model: torch.nn.Module, inputs: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer
    ) -> None:
        out = model(inputs["x"].to("cuda"))
        F.mse_loss(out, torch.zeros_like(out, device="cuda")).backward()
        optimizer.step()
        optimizer.zero_grad()

    res = simulate(ZOO_BY_NAME["mlp"].build, {"x": "64x512"}, device="cuda", step=step)
    assert res.step.endswith("step") and res.peak_bytes > 0


@pytest.mark.parametrize("flag", ["loss", "amp", "accumulate", "free_output"])
def test_step_refuses_flags_that_change_it(flag: str) -> None:
    kwargs: dict[str, object] = {
        "loss": {"loss": LossSpec("ce")},
        "amp": {"recipe": Recipe(amp="bf16")},
        "accumulate": {"recipe": Recipe(accumulate=2)},
        "free_output": {"free_output": True},
    }[flag]
    with pytest.raises(MemtraceError, match="would change your own step"):
        Config("train", step="x.py:step", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["infer", "no_grad"])
@pytest.mark.parametrize("name", ["transformer_sdpa", "tied", "mlp"])
def test_inference_modes_under_bf16_autocast(mode: str, name: str) -> None:
    _exact(compare(ZOO_BY_NAME[name], mode, "adam", Recipe(amp="bf16")))


def test_inference_mode_keeps_no_weight_cast() -> None:
    """inference_mode skips autocast's weight-cast cache (on PyTorch versions with pytorch#158232)."""
    from memtrace.tracer.meta.autocast import caches_under_inference_mode

    infer = compare(ZOO_BY_NAME["mlp"], "infer", "adam", Recipe(amp="bf16"))
    no_grad = compare(ZOO_BY_NAME["mlp"], "no_grad", "adam", Recipe(amp="bf16"))
    if caches_under_inference_mode():
        assert infer.measured == no_grad.measured
    else:
        assert infer.measured < no_grad.measured
    assert (infer.predicted < no_grad.predicted) == (infer.measured < no_grad.measured)


def test_real_module_is_copied_to_meta_without_its_weights() -> None:
    from memtrace.tracer.meta.metacopy import to_meta

    model = ZOO_BY_NAME["tied"].build()
    before = {n: p.clone() for n, p in model.named_parameters()}
    twin = to_meta(model)
    assert all(p.device.type == "meta" for p in twin.parameters())
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert twin.head.weight is twin.emb.weight  # type: ignore[union-attr]
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_top_level_api_with_a_real_module_and_tensors() -> None:
    import memtrace

    model = ZOO_BY_NAME["mlp"].build()
    x = torch.randn(64, 512)
    res = memtrace.simulate(model, [x], device="cpu")
    assert res.peak_bytes == simulate(ZOO_BY_NAME["mlp"].build, ["64x512"], device="cpu").peak_bytes


CHECKPOINT_STEP = """
import torch
from torch.utils.checkpoint import checkpoint

def step(model, inputs, optimizer):
    (ids,) = inputs
    x = model.drop(model.tok_emb(ids) + model.pos_emb[: ids.shape[1]])
    for block in model.blocks:
        x = checkpoint(block, x, use_reentrant=False)
    logits = model.head(model.ln_f(x))
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
"""


def test_user_step_with_its_own_checkpointing(tmp_path: Path) -> None:
    config = Config("train", parse_optimizer("sgd"), "cpu", step=_step_file(tmp_path, CHECKPOINT_STEP))
    cmp = compare_config(ZOO_BY_NAME["transformer_sdpa"], config)
    _exact(cmp)
    assert Phase.RECOMPUTE in {p.phase for p in cmp.result.phases}


README_LOOP = """
import torch
import torch.nn.functional as F

TARGETS = []  # made at the first step and kept, as --loss mse keeps its target with the batch

def step(model, inputs, optimizer):
    for micro in range(2):
        out = model(*inputs)
        if not TARGETS:
            TARGETS.append(torch.empty_like(out))
        loss = F.mse_loss(out, TARGETS[0])
        (loss / 2).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
"""


def test_the_default_step_is_the_readme_loop(tmp_path: Path) -> None:
    """The default step with --accumulate 2 --loss mse allocates what the README's loop, written by hand as a
    --step, allocates: the loss lives through backward (mse's loss holds an input-sized storage)."""
    build = ZOO_BY_NAME["mlp"].build
    default = simulate(build, ["64x512"], loss="mse", recipe=Recipe(accumulate=2), device="cpu")
    own = simulate(build, ["64x512"], step=_step_file(tmp_path, README_LOOP), device="cpu")
    assert default.peak_bytes == own.peak_bytes


SCALER_STEP = """
import torch
scaler = torch.amp.GradScaler("cuda")

def step(model, inputs, optimizer):
    with torch.autocast("cuda", dtype=torch.float16):
        loss = model(*inputs).float().sum()
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad()
"""


def test_a_step_file_is_imported_anew_for_each_simulation(tmp_path: Path) -> None:
    step = _step_file(tmp_path, SCALER_STEP)
    first = simulate(ZOO_BY_NAME["mlp"].build, ["64x512"], step=step)
    second = simulate(ZOO_BY_NAME["mlp"].build, ["64x512"], step=step)
    assert first.peak_bytes == second.peak_bytes
    assert first.cuda is not None and second.cuda is not None
    assert first.cuda.reserved_peak_bytes == second.cuda.reserved_peak_bytes


def test_cpu_step_counters_are_host_memory_on_cuda() -> None:
    from memtrace.tracer.core.records import Category

    res = simulate(ZOO_BY_NAME["mlp"].build, ["64x512"], optimizer="adam")
    params = [p for p in ZOO_BY_NAME["mlp"].build().parameters()]
    blocks = sum(2 * ((p.numel() * 4 + 511) // 512 * 512) for p in params)  # exp_avg, exp_avg_sq
    assert res.totals[Category.OPTIMIZER_STATE] == blocks


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"loss": LossSpec("ce", (parse_input("4x4"),))}, "--target is for --loss FILE.py:FUNC"),
        ({"loss": LossSpec("mse", class_dim=1)}, "--loss-class-dim is for --loss ce"),
        ({"device": "cpu", "alloc_conf": "expandable_segments:True"}, "--alloc-conf describes the GPU"),
        ({"device": "cpu", "sdpa_backend": "math"}, "--sdpa-backend describes the GPU"),
        ({"alloc_conf": "max_split_size_mb:1"}, "allocator settings in --alloc-conf"),
    ],
)
def test_flags_that_would_be_ignored_are_refused(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(MemtraceError, match=needle):
        Config(**kwargs)  # type: ignore[arg-type]


def test_a_step_takes_named_or_positional_inputs_not_both(tmp_path: Path) -> None:
    with pytest.raises(MemtraceError, match="name all of them, or none"):
        simulate(ZOO_BY_NAME["mlp"].build, ["64x512", "x=64x512"], step=_step_file(tmp_path))

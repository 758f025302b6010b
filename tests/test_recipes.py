"""Recipes against the CPU allocator: each within 1% of the real step with the same recipe applied."""

from __future__ import annotations

import pytest
from accuracy import compare
from zoo import ZOO_BY_NAME

from memtrace.tracer.core.errors import MemtraceError
from memtrace.tracer.engine.recipes import Recipe, checkpoint_targets
from memtrace.tracer.simulate import simulate

TOLERANCE = 0.01

CHECKPOINT = {
    "transformer_sdpa": ("blocks.*",),
    "transformer_mha": ("blocks.*",),
    "tied": ("mlp",),
    "dict_output": ("fc1", "fc2"),
}
CASES = [(name, Recipe(checkpoint=globs)) for name, globs in CHECKPOINT.items()]
CASES += [(name, Recipe(accumulate=2)) for name in ("mlp", "transformer_sdpa", "tied", "dict_output")]


@pytest.mark.parametrize("optimizer", ["adam", "sgd:momentum=0.9"])
@pytest.mark.parametrize("name,recipe", CASES, ids=[f"{n}-{r.text()}" for n, r in CASES])
def test_recipe_matches_the_allocator(name: str, recipe: Recipe, optimizer: str) -> None:
    cmp = compare(ZOO_BY_NAME[name], "train", optimizer, recipe)
    assert abs(cmp.error) <= TOLERANCE, f"{100 * cmp.error:+.3f}%"


@pytest.mark.parametrize("optimizer", ["sgd:momentum=0.9", "adamw", "adagrad"])
@pytest.mark.parametrize("name", ["mlp", "transformer_sdpa", "tied", "dict_output"])
def test_optimizers_match_the_allocator(name: str, optimizer: str) -> None:
    cmp = compare(ZOO_BY_NAME[name], "train", optimizer)
    assert abs(cmp.error) <= TOLERANCE, f"{100 * cmp.error:+.3f}%"


def test_checkpointing_saves_memory_and_costs_flops() -> None:
    plain = compare(ZOO_BY_NAME["transformer_sdpa"], "train", "sgd")
    ckpt = compare(ZOO_BY_NAME["transformer_sdpa"], "train", "sgd", Recipe(checkpoint=("blocks.*",)))
    assert ckpt.predicted < plain.predicted
    assert ckpt.result.flops > plain.result.flops


def test_checkpoint_targets_are_outermost() -> None:
    import torch

    with torch.device("meta"):
        model = ZOO_BY_NAME["transformer_sdpa"].build()
    assert checkpoint_targets(model, ("blocks*",)) == ["blocks"]
    assert checkpoint_targets(model, ("blocks.*",)) == ["blocks.block0", "blocks.block1"]
    with pytest.raises(MemtraceError, match="matches no module"):
        checkpoint_targets(model, ("encoder.*",))


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"accumulate": 0}, "at least 1"),
        ({"amp": "fp8"}, "unknown --amp"),
        ({"dtype": "int8"}, "unknown --dtype"),
    ],
)
def test_bad_recipes(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(MemtraceError, match=needle):
        Recipe(**kwargs)  # type: ignore[arg-type]


def test_custom_optimizer_class(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "opt.py"
    path.write_text(
        "import torch\n"
        "class Lion(torch.optim.Optimizer):\n"
        "    def __init__(self, params, lr=1e-4):\n"
        "        super().__init__(params, {'lr': lr})\n"
        "    @torch.no_grad()\n"
        "    def step(self):\n"
        "        for g in self.param_groups:\n"
        "            for p in g['params']:\n"
        "                st = self.state[p]\n"
        "                if 'm' not in st:\n"
        "                    st['m'] = torch.zeros_like(p)\n"
        "                st['m'].mul_(0.9).add_(p.grad)\n"
        "                p.add_(st['m'].sign(), alpha=-g['lr'])\n"
    )
    mlp = ZOO_BY_NAME["mlp"]
    res = simulate(mlp.build, ["64x512"], optimizer=f"{path}:Lion:lr=0.001", device="cpu")
    param_bytes = res.model.parameter_bytes
    assert res.peak.by_category["optimizer_state"] == param_bytes  # one momentum buffer per parameter


def test_what_if_rows_equal_separate_runs(capsys) -> None:  # type: ignore[no-untyped-def]
    import json
    from pathlib import Path

    from test_cli import run

    seed = str(Path(__file__).resolve().parent.parent / "benchmarks" / "models" / "seed_cnn.py") + ":build"
    code, out, err = run(capsys, seed, "--input", "256x3x144x256", "--what-if", "--json")
    assert code == 0, err
    rows = {r["change"]: r for r in json.loads(out)["what_if"]}
    assert {
        "bf16 autocast",
        "fp16 autocast",
        "checkpoint 6 layers",
        "half micro-batch, accumulate x2",
        "SGD with momentum",
        "no optimizer state (plain SGD)",
    } == set(rows)
    assert all(not r["error"] for r in rows.values())
    _, sgd, _ = run(capsys, seed, "--input", "256x3x144x256", "--optimizer", "sgd:momentum=0.9", "--json")
    assert rows["SGD with momentum"]["peak_bytes"] == json.loads(sgd)["peak_bytes"]
    _, micro, _ = run(capsys, seed, "--input", "128x3x144x256", "--accumulate", "2", "--json")
    micro_data = json.loads(micro)
    assert rows["half micro-batch, accumulate x2"]["peak_bytes"] == micro_data["peak_bytes"]
    assert micro_data["effective_batch"] == 256


class _FlatBlock(__import__("torch").nn.Module):
    """A block with no submodules: its checkpointed recomputation is seen through the wrapper, not hooks."""

    def __init__(self) -> None:
        import torch

        super().__init__()
        self.w1 = torch.nn.Parameter(torch.randn(256, 1024) * 0.01)
        self.w2 = torch.nn.Parameter(torch.randn(1024, 256) * 0.01)

    def forward(self, x):  # type: ignore[no-untyped-def]
        import torch

        return torch.tanh(x @ self.w1) @ self.w2


def _flat_model():  # type: ignore[no-untyped-def]
    import torch

    return torch.nn.Sequential(_FlatBlock(), _FlatBlock())


def test_recompute_of_a_module_without_children_is_its_own_phase() -> None:
    import torch
    from reference import measure

    from memtrace.tracer.core.specs import parse_optimizer

    recipe = Recipe(checkpoint=("0", "1"))
    res = simulate(_flat_model, ["64x256"], device="cpu", optimizer="sgd", recipe=recipe)
    phases = {p.phase.value: p for p in res.phases}
    assert "recompute" in phases and phases["recompute"].module in ("0", "1")
    torch.manual_seed(0)
    ref = measure(_flat_model(), [torch.randn(64, 256)], "train", parse_optimizer("sgd"), recipe)
    assert res.peak_bytes == ref.peak


AMP_MODELS = ["mlp", "seed_cnn", "dict_output", "transformer_mha", "transformer_sdpa", "tied"]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.parametrize("name", AMP_MODELS)
def test_autocast_matches_the_allocator_with_onednn(name: str, amp: str) -> None:
    """Mixed precision with the CPU build's defaults (oneDNN on); fp16 includes the GradScaler."""
    cmp = compare(ZOO_BY_NAME[name], "train", "adam", Recipe(amp=amp))
    assert abs(cmp.error) <= TOLERANCE, f"{100 * cmp.error:+.3f}%"

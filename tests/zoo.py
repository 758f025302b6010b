"""A zoo of small self-written models for testing the memory simulator against the real allocator.

Every case builds deterministically (its own seeded RNG, the global RNG is left untouched), runs on the
``meta`` device (no data-dependent Python control flow, no ``.item()``), and is small enough for one CPU
training step to take well under half a second while still moving about a megabyte of activations or more.
"""

from __future__ import annotations

import functools
import importlib.util
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from memtrace.tracer.engine.loader import DTYPES

REPO_ROOT = Path(__file__).resolve().parent.parent
SEED_CNN_PATH = REPO_ROOT / "benchmarks" / "models" / "seed_cnn.py"


@dataclass(frozen=True)
class ZooCase:
    """One model of the zoo: a builder and the ``(shape, dtype)`` of each positional forward input."""

    name: str
    build: Callable[[], nn.Module]
    inputs: tuple[tuple[tuple[int, ...], str], ...]
    train: bool = True  # False if the model cannot train
    high: int = 10  # exclusive upper bound of integer inputs (token ids)


def make_inputs(case: ZooCase, device: str | torch.device = "cpu") -> list[torch.Tensor]:
    """Deterministic inputs for ``case``: the same values on every call (``torch.empty`` on ``meta``).

    Float inputs are ``randn``, integer inputs ``randint(0, case.high)``, bool inputs fair coin flips.
    Values are drawn on the CPU from a generator seeded 0 and moved to ``device``.
    """
    device = torch.device(device)
    if device.type == "meta":
        return [torch.empty(shape, dtype=DTYPES[dtype], device=device) for shape, dtype in case.inputs]
    gen = torch.Generator(device="cpu").manual_seed(0)
    out: list[torch.Tensor] = []
    for shape, dtype_name in case.inputs:
        dtype = DTYPES[dtype_name]
        if dtype.is_floating_point:
            t = torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype)
        elif dtype == torch.bool:
            t = torch.rand(shape, generator=gen) < 0.5
        else:
            t = torch.randint(0, case.high, shape, generator=gen, dtype=dtype)
        out.append(t.to(device))
    return out


def _seeded(builder: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """Run ``builder`` under ``torch.manual_seed(0)`` without disturbing the caller's global RNG."""

    def wrapper() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return builder()

    # Not functools.wraps: builders may be classes, whose __dict__ must not be copied onto a function.
    wrapper.__name__ = wrapper.__qualname__ = f"seeded_{builder.__name__}"
    return wrapper


# --------------------------------------------------------------------------- mlp


def _build_mlp() -> nn.Module:
    return nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(512, 2048),
            relu1=nn.ReLU(),
            fc2=nn.Linear(2048, 2048),
            relu2=nn.ReLU(),
            fc3=nn.Linear(2048, 10),
        )
    )


# --------------------------------------------------------------------------- seed_cnn


@functools.cache
def _seed_cnn_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("memtrace_zoo_seed_cnn", SEED_CNN_PATH)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {SEED_CNN_PATH}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build_seed_cnn() -> nn.Module:
    module: nn.Module = _seed_cnn_module().build(h=144, w=256, classes=10)
    return module


# --------------------------------------------------------------------------- resnet_block


class BasicBlock(nn.Module):
    """ResNet basic block: conv-bn-relu-conv-bn, ``+= identity``, relu (in-place like torchvision)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class TinyResNet(nn.Module):
    def __init__(self, channels: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = BasicBlock(channels)
        self.layer2 = BasicBlock(channels)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(self.flatten(self.avgpool(x)))


# --------------------------------------------------------------------------- depthwise


def _dw_block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    """MobileNet-v1 block: depthwise 3x3 (groups=c_in) + BN + ReLU6, pointwise 1x1 + BN + ReLU6."""
    return nn.Sequential(
        OrderedDict(
            dw=nn.Conv2d(c_in, c_in, 3, stride=stride, padding=1, groups=c_in, bias=False),
            dw_bn=nn.BatchNorm2d(c_in),
            dw_relu=nn.ReLU6(inplace=True),
            pw=nn.Conv2d(c_in, c_out, 1, bias=False),
            pw_bn=nn.BatchNorm2d(c_out),
            pw_relu=nn.ReLU6(inplace=True),
        )
    )


def _build_depthwise() -> nn.Module:
    return nn.Sequential(
        OrderedDict(
            stem=nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False),
            stem_bn=nn.BatchNorm2d(32),
            stem_relu=nn.ReLU6(inplace=True),
            block1=_dw_block(32, 64, stride=1),
            block2=_dw_block(64, 128, stride=2),
            block3=_dw_block(128, 128, stride=1),
            block4=_dw_block(128, 256, stride=2),
            avgpool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            fc=nn.Linear(256, 10),
        )
    )


# --------------------------------------------------------------------------- transformers


class MLPBlock(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class MHABlock(nn.Module):
    """Pre-LN transformer block on ``nn.MultiheadAttention``."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, 4 * dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.drop(self.attn(h, h, h, need_weights=False)[0])
        return x + self.mlp(self.ln2(x))


class CausalSelfAttention(nn.Module):
    """Hand-written attention: fused qkv projection + ``F.scaled_dot_product_attention(is_causal=True)``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, T, 3C) -> (3, B, H, T, D); no shape reads, so it traces symbolically.
        qkv = self.qkv(x).unflatten(-1, (3, self.heads, self.head_dim)).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=0.0)
        return self.proj(y.transpose(1, 2).flatten(2))


class SDPABlock(nn.Module):
    """Pre-LN transformer block on hand-written SDPA attention."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads)
        self.drop = nn.Dropout(dropout)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, 4 * dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.mlp(self.ln2(x))


class TinyLM(nn.Module):
    """Token + learned positional embedding, pre-LN blocks, final LayerNorm, LM head."""

    def __init__(
        self,
        block: Callable[[int, int], nn.Module],
        vocab: int = 1000,
        dim: int = 128,
        heads: int = 4,
        layers: int = 2,
        max_len: int = 64,
    ) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, dim)
        self.pos_emb = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        self.drop = nn.Dropout(0.1)
        self.blocks = nn.Sequential(OrderedDict((f"block{i}", block(dim, heads)) for i in range(layers)))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tok_emb(ids) + self.pos_emb[: ids.shape[1]]
        x = self.blocks(self.drop(x))
        return self.head(self.ln_f(x))


def _build_transformer_mha() -> nn.Module:
    return TinyLM(MHABlock)


def _build_transformer_sdpa() -> nn.Module:
    return TinyLM(SDPABlock)


# --------------------------------------------------------------------------- lstm


class LSTMClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(64, 128, num_layers=2, batch_first=True)
        self.fc = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lstm(x)[0]  # (B, T, H); indexing, not unpacking, keeps fx tracing happy
        return self.fc(out[:, -1])


# --------------------------------------------------------------------------- tied


class TiedLM(nn.Module):
    """Embedding and LM head share one weight tensor (``head.weight is emb.weight``)."""

    def __init__(self, vocab: int = 500, dim: int = 128) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mlp = MLPBlock(dim, 4 * dim, dropout=0.0)
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids)
        x = x + self.mlp(x)
        return self.head(self.ln(x))


# --------------------------------------------------------------------------- frozen


def _build_frozen() -> nn.Module:
    backbone = nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(256, 2048),
            relu1=nn.ReLU(),
            fc2=nn.Linear(2048, 2048),
            relu2=nn.ReLU(),
        )
    )
    backbone.requires_grad_(False)
    return nn.Sequential(OrderedDict(backbone=backbone, head=nn.Linear(2048, 10)))


def _build_frozen_middle() -> nn.Module:
    """A frozen block between trainable ones: backward must pass through it without weight grads."""
    middle = nn.Sequential(
        OrderedDict(
            fc=nn.Linear(1024, 1024),
            relu=nn.ReLU(),
        )
    )
    middle.requires_grad_(False)
    return nn.Sequential(
        OrderedDict(
            stem=nn.Linear(256, 1024),
            stem_relu=nn.ReLU(),
            middle=middle,
            head=nn.Linear(1024, 10),
        )
    )


# --------------------------------------------------------------------------- multi_input


class MultiInput(nn.Module):
    """Conv branch on an image, masked embedding branch on token ids, concatenated into one head."""

    def __init__(self, vocab: int = 100, dim: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(32, 32, 3, stride=2, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.emb = nn.Embedding(vocab, dim)
        self.head = nn.Linear(32 + dim, 10)

    def forward(self, x: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        img = self.flatten(self.pool(self.relu2(self.conv2(self.relu1(self.conv1(x))))))
        tok = self.emb(ids).masked_fill(mask.unsqueeze(-1), 0.0).mean(dim=1)
        return self.head(torch.cat([img, tok], dim=1))


# --------------------------------------------------------------------------- dict / tuple outputs


class DictOutput(nn.Module):
    """Returns float ``logits`` and ``aux`` plus an integer ``pred`` that a loss must skip."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(128, 2048)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(2048, 2048)
        self.act2 = nn.GELU()
        self.logits = nn.Linear(2048, 10)
        self.aux = nn.Linear(2048, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        logits = self.logits(h)
        return {"logits": logits, "aux": self.aux(h), "pred": logits.argmax(dim=-1)}


class TupleOutput(nn.Module):
    """Returns a nested tuple ``(main, (side, gate))``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(128, 2048)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(2048, 2048)
        self.act2 = nn.ReLU()
        self.main = nn.Linear(2048, 10)
        self.side = nn.Linear(2048, 4)
        self.gate = nn.Linear(2048, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return self.main(h), (self.side(h), torch.sigmoid(self.gate(h)))


# --------------------------------------------------------------------------- groupnorm_unet


def _conv_gn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1),
            norm=nn.GroupNorm(8, c_out),
            act=nn.SiLU(),
        )
    )


class TinyUNet(nn.Module):
    """Two-level encoder-decoder with GroupNorm, nearest upsampling and concatenated skips."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = _conv_gn(3, 32)
        self.down1 = _conv_gn(32, 64, stride=2)
        self.down2 = _conv_gn(64, 64, stride=2)
        self.mid = _conv_gn(64, 64)
        self.up2 = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec2 = _conv_gn(128, 64)
        self.up1 = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec1 = _conv_gn(96, 32)
        self.out = nn.Conv2d(32, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.enc1(x)  # (B, 32, H, W)
        s2 = self.down1(s1)  # (B, 64, H/2, W/2)
        h = self.mid(self.down2(s2))  # (B, 64, H/4, W/4)
        h = self.dec2(torch.cat([self.up2(h), s2], dim=1))
        h = self.dec1(torch.cat([self.up1(h), s1], dim=1))
        return self.out(h)


# --------------------------------------------------------------------------- the zoo

ZOO: tuple[ZooCase, ...] = (
    ZooCase("mlp", _seeded(_build_mlp), (((64, 512), "float32"),)),
    ZooCase("seed_cnn", _seeded(_build_seed_cnn), (((2, 3, 144, 256), "float32"),)),
    ZooCase("resnet_block", _seeded(TinyResNet), (((4, 3, 64, 64), "float32"),)),
    ZooCase("depthwise", _seeded(_build_depthwise), (((4, 3, 64, 64), "float32"),)),
    ZooCase("transformer_mha", _seeded(_build_transformer_mha), (((4, 64), "int64"),), high=1000),
    ZooCase("transformer_sdpa", _seeded(_build_transformer_sdpa), (((4, 64), "int64"),), high=1000),
    ZooCase("lstm", _seeded(LSTMClassifier), (((8, 32, 64), "float32"),)),
    ZooCase("tied", _seeded(TiedLM), (((8, 32), "int64"),), high=500),
    ZooCase("frozen", _seeded(_build_frozen), (((16, 256), "float32"),)),
    ZooCase("frozen_middle", _seeded(_build_frozen_middle), (((16, 256), "float32"),)),
    ZooCase(
        "multi_input",
        _seeded(MultiInput),
        (((8, 3, 32, 32), "float32"), ((8, 16), "int64"), ((8, 16), "bool")),
        high=100,
    ),
    ZooCase("dict_output", _seeded(DictOutput), (((16, 128), "float32"),)),
    ZooCase("tuple_output", _seeded(TupleOutput), (((16, 128), "float32"),)),
    ZooCase("groupnorm_unet", _seeded(TinyUNet), (((2, 3, 64, 64), "float32"),)),
)

ZOO_BY_NAME: dict[str, ZooCase] = {case.name: case for case in ZOO}

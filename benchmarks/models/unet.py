"""Two U-Nets: a small segmentation U-Net (BatchNorm, transposed-convolution upsampling, concatenated
skips) and a diffusion-style U-Net (GroupNorm residual blocks with a timestep embedding, self-attention at
the lowest resolution), the shape of a DDPM / Stable Diffusion denoiser in miniature.

memtrace benchmarks/models/unet.py:small --input 2x3x64x64 --loss mse
memtrace benchmarks/models/unet.py:diffusion --input 2x3x32x32 --input 2:int64 --loss mse
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallUNet(nn.Module):
    """Three levels: channels `base`, 2`base`, 4`base`; output channels as the input's (`out` classes)."""

    def __init__(self, channels: int = 3, base: int = 16, out: int = 3) -> None:
        super().__init__()
        self.enc1 = _double_conv(channels, base)
        self.enc2 = _double_conv(base, 2 * base)
        self.mid = _double_conv(2 * base, 4 * base)
        self.up2 = nn.ConvTranspose2d(4 * base, 2 * base, 2, stride=2)
        self.dec2 = _double_conv(4 * base, 2 * base)
        self.up1 = nn.ConvTranspose2d(2 * base, base, 2, stride=2)
        self.dec1 = _double_conv(2 * base, base)
        self.head = nn.Conv2d(base, out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.enc1(x)
        s2 = self.enc2(F.max_pool2d(s1, 2))
        h = self.mid(F.max_pool2d(s2, 2))
        h = self.dec2(torch.cat([self.up2(h), s2], dim=1))
        h = self.dec1(torch.cat([self.up1(h), s1], dim=1))
        return self.head(h)


def small(channels: int = 3, base: int = 16, out: int = 3) -> nn.Module:
    return SmallUNet(channels, base, out)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps, (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, t_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(8, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(t_dim, c_out)
        self.norm2 = nn.GroupNorm(8, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Self-attention over the pixels of a feature map (scaled dot-product attention, `heads` heads)."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(8, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class DiffusionUNet(nn.Module):
    """Predicts the noise of `x` at timestep `t`: two levels, attention at the lower one and in the middle."""

    def __init__(self, channels: int = 3, base: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.base = base
        t_dim = 4 * base
        self.time = nn.Sequential(nn.Linear(base, t_dim), nn.SiLU(), nn.Linear(t_dim, t_dim))
        self.stem = nn.Conv2d(channels, base, 3, padding=1)
        self.down1 = ResBlock(base, base, t_dim)
        self.pool = nn.Conv2d(base, base, 3, stride=2, padding=1)
        self.down2 = ResBlock(base, 2 * base, t_dim)
        self.attn2 = AttnBlock(2 * base, heads)
        self.mid = ResBlock(2 * base, 2 * base, t_dim)
        self.mid_attn = AttnBlock(2 * base, heads)
        self.up2 = ResBlock(4 * base, 2 * base, t_dim)
        self.up_attn2 = AttnBlock(2 * base, heads)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.up1 = ResBlock(3 * base, base, t_dim)
        self.out = nn.Sequential(nn.GroupNorm(8, base), nn.SiLU(), nn.Conv2d(base, channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.time(timestep_embedding(t, self.base))
        s1 = self.down1(self.stem(x), temb)
        s2 = self.attn2(self.down2(self.pool(s1), temb))
        h = self.mid_attn(self.mid(s2, temb))
        h = self.up_attn2(self.up2(torch.cat([h, s2], dim=1), temb))
        h = self.up1(torch.cat([self.upsample(h), s1], dim=1), temb)
        return self.out(h)


def diffusion(channels: int = 3, base: int = 32, heads: int = 4) -> nn.Module:
    return DiffusionUNet(channels, base, heads)

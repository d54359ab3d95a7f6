"""Conditional UNet for multi-channel satellite data.

Input at each step: the noisy state x_t (C channels), the condition y (upsampled LR or Stage 1
output, C channels) and a validity mask (1 channel), concatenated; a sinusoidal timestep embedding
modulates every residual block.  Output: the x0 prediction (C channels), as y plus a learned
residual whose last convolution starts at zero -- an untrained network predicts the bicubic
upsampling exactly, and training only has to add what bicubic misses.

Invalid pixels (off-disk, NaN) enter as zeros with mask 0; the mask also multiplies every
feature map after each convolution block, so nothing computed from invalid pixels can grow
there and leak into valid ones through later convolutions, and the output is finite everywhere.

``activation_checkpointing`` (a module flag, set by the trainer from ``train.activation_checkpointing``;
not part of ModelConfig, so exports do not change) recomputes every residual and attention block's
activations in the backward pass instead of storing them: less activation memory for about one more
forward of compute, with the same loss and gradients.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..schema import ModelConfig


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of (N,) step indices -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ChannelNorm(nn.Module):
    """Layer norm over channels at each pixel.

    Unlike GroupNorm/BatchNorm it uses no statistics over the image, so the network is
    translation-equivariant: a tile computes exactly what the whole scene computes there, which
    full-disk tiling relies on."""

    def __init__(self, ch: int, eps: float = 1e-5):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(ch)), nn.Parameter(torch.zeros(ch))
        self.eps = eps

    def forward(self, x):
        # torch's fused layer_norm over the last dim, on a channels-last view
        return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias,
                            self.eps).permute(0, 3, 1, 2)


def _norm(ch: int) -> nn.Module:
    return ChannelNorm(ch)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int, dropout: float):
        super().__init__()
        self.n1, self.c1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.t = nn.Linear(temb, cout)
        self.n2, self.c2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, temb, mask):
        h = self.c1(F.silu(self.n1(x)))
        h = h + self.t(F.silu(temb))[:, :, None, None]
        h = self.c2(self.drop(F.silu(self.n2(h))))
        return (self.skip(x) + h) * mask


class Attention(nn.Module):
    """Single-head self-attention over valid pixels only (global within a tile: configure
    ``attention_levels: []`` where tiled inference must equal whole-scene inference)."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm, self.qkv, self.out = _norm(ch), nn.Conv2d(ch, 3 * ch, 1), nn.Conv2d(ch, ch, 1)

    def forward(self, x, mask):
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, c, h * w).unbind(1)
        keep = mask.reshape(n, 1, h * w) > 0  # invalid keys get no attention weight
        att = F.scaled_dot_product_attention(q.transpose(1, 2)[:, None], k.transpose(1, 2)[:, None],
                                             v.transpose(1, 2)[:, None], attn_mask=keep[:, None])
        att = torch.nan_to_num(att)  # a query whose keys are all invalid (fully masked tile)
        return (x + self.out(att[:, 0].transpose(1, 2).reshape(n, c, h, w))) * mask


class ConditionalUNet(nn.Module):
    def __init__(self, channels: int, cfg: ModelConfig, activation_checkpointing: bool = False):
        super().__init__()
        # torch.utils.checkpoint per block, only while training with grad enabled (see module doc)
        self.activation_checkpointing = activation_checkpointing
        b = cfg.base_channels
        self.channels, self.levels = channels, len(cfg.channel_mult)
        temb = 4 * b
        self.temb = nn.Sequential(nn.Linear(b, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.base = b
        self.inp = nn.Conv2d(2 * channels + 1, b, 3, padding=1)
        self.down, self.down_attn, self.pool = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        widths, cur = [], b
        for lvl, m in enumerate(cfg.channel_mult):
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(cur, b * m, temb, cfg.dropout))
                cur = b * m
            self.down.append(blocks)
            self.down_attn.append(Attention(cur) if lvl in cfg.attention_levels else nn.Identity())
            widths.append(cur)
            self.pool.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1) if lvl < self.levels - 1
                             else nn.Identity())
        self.mid1, self.mid2 = ResBlock(cur, cur, temb, cfg.dropout), ResBlock(cur, cur, temb, cfg.dropout)
        self.up, self.up_attn = nn.ModuleList(), nn.ModuleList()
        for lvl in reversed(range(self.levels)):
            blocks = nn.ModuleList()
            for i in range(cfg.num_res_blocks):
                blocks.append(ResBlock(cur + (widths[lvl] if i == 0 else 0), widths[lvl], temb, cfg.dropout))
                cur = widths[lvl]
            self.up.append(blocks)
            self.up_attn.append(Attention(cur) if lvl in cfg.attention_levels else nn.Identity())
        self.out = nn.Sequential(_norm(cur), nn.SiLU(), nn.Conv2d(cur, channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    @property
    def multiple(self) -> int:
        """Input sides must be a multiple of this."""
        return 2 ** (self.levels - 1)

    def receptive_margin(self, probe: int = 256) -> int:
        """How many pixels away an input can still change an output pixel, measured: the support
        of d(output centre)/d(inputs) on a ``probe``-sized random input (tiling needs a halo this wide
        for tiles to reproduce the whole scene)."""
        probe = max(probe, 4 * self.multiple)
        dev = next(self.parameters()).device
        g = torch.Generator().manual_seed(0)
        x, y = (torch.randn(1, self.channels, probe, probe, generator=g).to(dev).requires_grad_()
                for _ in range(2))
        with torch.enable_grad():
            out = self(x, y, torch.ones(1, dtype=torch.long, device=dev),
                       torch.ones(1, 1, probe, probe, device=dev))
            out[0, :, probe // 2, probe // 2].sum().backward()
        support = ((x.grad.abs() + y.grad.abs()).sum(dim=(0, 1)) > 0).nonzero()
        return int((support - probe // 2).abs().max())

    def forward(self, x_t: torch.Tensor, y: torch.Tensor, t: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """x_t, y: (N, C, H, W); t: (N,) step indices; mask: (N, 1, H, W) in {0, 1}."""
        x_t, y = x_t * mask, y * mask
        temb = self.temb(timestep_embedding(t, self.base))
        h = self.inp(torch.cat([x_t, y, mask], dim=1)) * mask
        masks, skips = [mask], []
        for lvl in range(self.levels):
            for blk in self.down[lvl]:
                h = self._block(blk, h, temb, masks[-1])
            h = self._attn(self.down_attn[lvl], h, masks[-1])
            skips.append(h)
            if lvl < self.levels - 1:
                masks.append(F.max_pool2d(masks[-1], 2))  # a coarse cell is valid if any child is
                h = self.pool[lvl](h) * masks[-1]
        h = self._block(self.mid1, h, temb, masks[-1])
        h = self._block(self.mid2, h, temb, masks[-1])
        for i, lvl in enumerate(reversed(range(self.levels))):
            if i > 0:
                h = F.interpolate(h, scale_factor=2, mode="nearest") * masks[lvl]
            for j, blk in enumerate(self.up[i]):
                h = self._block(blk, torch.cat([h, skips[lvl]], 1) if j == 0 else h, temb, masks[lvl])
            h = self._attn(self.up_attn[i], h, masks[lvl])
        return (y + self.out(h)) * mask

    def _block(self, layer, *args):
        """``layer(*args)``; under activation checkpointing its activations are recomputed in backward
        (non-reentrant: RNG state restored, so dropout draws the same mask twice)."""
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)

    def _attn(self, layer, h, mask):
        return self._block(layer, h, mask) if isinstance(layer, Attention) else h

"""Image-quality measures shared by training validation and evaluation (masked, per batch)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_SOBEL = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, data_range: float = 2.0) -> float:
    """Masked PSNR in dB over ``data_range`` (2 for data normalised to [-1, 1]); inf when identical."""
    w = mask.expand_as(pred)
    mse = float(((pred - target) ** 2 * w).sum() / w.sum().clamp_min(1))
    return float("inf") if mse == 0 else 10 * math.log10(data_range ** 2 / mse)


def sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
    """|grad| of each channel of (N, C, H, W) by the 3x3 Sobel operator (valid region, H-2 x W-2)."""
    c = x.shape[1]
    kx = _SOBEL.to(x).view(1, 1, 3, 3).expand(c, 1, 3, 3)
    gx = F.conv2d(x, kx, groups=c)
    gy = F.conv2d(x, kx.transpose(2, 3), groups=c)
    return torch.hypot(gx, gy)


def gradient_ratio(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """The paper's gradient-preservation ratio: mean Sobel |grad| of SR / of HR (1 = as sharp as HR)."""
    m = (-F.max_pool2d(-mask, 3, stride=1)).expand(-1, pred.shape[1], -1, -1)  # 3x3 fully valid
    gp, gt = sobel_magnitude(pred), sobel_magnitude(target)
    den = float((gt * m).sum())
    return float("nan") if den == 0 else float((gp * m).sum()) / den


def seam_ratio(img, edge_cols) -> float:
    """Mean |d/dx| across the given column boundaries (between column c-1 and c) over the mean
    |d/dx| elsewhere, NaN-aware: 1 means tile edges are invisible, > 1 a seam."""
    import numpy as np
    dx = np.abs(np.diff(np.asarray(img, np.float64), axis=1))
    at = np.zeros(dx.shape[1], bool)
    at[[c - 1 for c in edge_cols]] = True
    return float(np.nanmean(dx[:, at]) / np.nanmean(dx[:, ~at]))


def tile_edge_cols(n_lr: int, tile: int, overlap: int, scale: int) -> list[int]:
    """HR columns where a tile of the plan starts or ends inside the scene."""
    from ..inference.tiling import tile_origins
    starts = tile_origins(n_lr, min(tile, n_lr), overlap)
    return sorted({c * scale for c in starts if c > 0} | {(c + tile) * scale for c in starts if c + tile < n_lr})

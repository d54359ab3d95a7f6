"""Pixel fidelity of a prediction against its truth: PSNR and the Sobel gradient ratio.

Training validates with these; :mod:`cloudsr_hpc.evaluation.metrics` builds the rest of its
measures on the same masked sums (and re-exports these, its one definition).  Images are
(N, C, H, W) tensors in normalised units; masks (N, 1, H, W) with 1 = valid; ``rows=(a, b)``
restricts a sum to the rows a block owns when it carries halo rows.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..data.degradations import correlate1d


def erode(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """1 where the whole (2r+1)^2 window is valid, on the valid-convolution grid (H-2r, W-2r)."""
    k = 2 * radius + 1
    return -F.max_pool2d(-mask, k, stride=1) if radius else mask


def crop_rows(x: torch.Tensor, rows: tuple[int, int] | None, offset: int = 0) -> torch.Tensor:
    """Rows [a, b) of an image whose first row is image row ``offset`` (valid-convolution maps)."""
    if rows is None:
        return x
    a, b = rows
    return x[..., max(a - offset, 0):max(b - offset, 0), :]


def channel_sum(x: torch.Tensor) -> torch.Tensor:
    return x.double().sum(dim=(0, 2, 3))


def valid_only(mask: torch.Tensor, *images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Invalid pixels (NaN, fill values) set to 0 so they cannot leak through 0-weights (NaN * 0 = NaN)."""
    return tuple(torch.where(mask > 0, x, torch.zeros_like(x)) for x in images)


# --------------------------------------------------------------------------- PSNR
def squared_error_sums(pred, target, mask, rows=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of squared error, valid pixel count) per channel."""
    pred, target = valid_only(mask, pred, target)
    w = crop_rows(mask.expand_as(pred), rows)
    err = crop_rows((pred - target) ** 2, rows)
    return channel_sum(err * w), channel_sum(w)


def psnr_from(sq: torch.Tensor | float, count: torch.Tensor | float, data_range: float = 2.0):
    """10 log10(range^2 / MSE); inf when the error is exactly zero, NaN without valid pixels."""
    sq, count = torch.as_tensor(sq, dtype=torch.float64), torch.as_tensor(count, dtype=torch.float64)
    mse = sq / count.clamp_min(1)
    out = 10 * torch.log10(data_range ** 2 / mse)  # mse == 0 -> inf
    return torch.where(count > 0, out, torch.full_like(out, math.nan))


def psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, data_range: float = 2.0) -> float:
    """Masked PSNR over all channels in dB over ``data_range`` (2 for [-1, 1]); inf when identical."""
    sq, n = squared_error_sums(pred, target, mask)
    return float(psnr_from(sq.sum(), n.sum(), data_range))


# --------------------------------------------------------------------------- gradient ratio
def sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
    """|grad| of each channel of (N, C, H, W) by the 3x3 Sobel operator (valid region, H-2 x W-2),
    applied separably: a central difference along one axis, [1, 2, 1] smoothing along the other."""
    d = torch.tensor([-1.0, 0.0, 1.0], dtype=x.dtype, device=x.device)
    s = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device)
    gx = correlate1d(correlate1d(x, d, -1), s, -2)
    gy = correlate1d(correlate1d(x, s, -1), d, -2)
    return torch.hypot(gx, gy)


def gradient_sums(pred, target, mask, rows=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum |grad SR|, sum |grad HR|) per channel over pixels whose 3x3 stencil is valid."""
    m = crop_rows(erode(mask, 1).expand(-1, pred.shape[1], -1, -1), rows, 1)
    gp, gt = (crop_rows(sobel_magnitude(x), rows, 1) for x in valid_only(mask, pred, target))
    return channel_sum(gp * m), channel_sum(gt * m)


def gradient_ratio(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """The paper's gradient-preservation ratio: mean Sobel |grad| of SR / of HR (1 = as sharp as HR)."""
    gp, gt = gradient_sums(pred, target, mask)
    return float("nan") if float(gt.sum()) == 0 else float(gp.sum() / gt.sum())

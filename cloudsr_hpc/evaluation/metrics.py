"""Image-quality measures, per channel and NaN-aware (a validity mask), as additive sums.

Every measure is kept as sums over pixels (or tiles) so patches, batches and the row bands of a
full-disk scene combine exactly: PSNR from the total squared error, SSIM as the mean of its map,
the gradient ratio as a ratio of summed Sobel magnitudes, the spectrum ratio from summed tile
spectra (Welch), the FSS from summed squared fraction differences.  ``rows=(a, b)`` restricts a
sum to the rows a block owns when it carries halo rows for the neighbourhood measures.

Images are (N, C, H, W) tensors in normalised units; masks (N, 1, H, W) with 1 = valid.
PSNR and the gradient measures are defined in :mod:`cloudsr_hpc.models.fidelity` (training
validates with them; the masked-sum helpers shared by every measure live there too) and are
re-exported here.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..data.degradations import correlate1d
from ..models.fidelity import channel_sum, crop_rows, erode, valid_only

# the pixel measures training validates with: defined once in models/fidelity.py, part of this API too
from ..models.fidelity import gradient_ratio as gradient_ratio
from ..models.fidelity import gradient_sums as gradient_sums
from ..models.fidelity import psnr as psnr
from ..models.fidelity import psnr_from as psnr_from
from ..models.fidelity import sobel_magnitude as sobel_magnitude
from ..models.fidelity import squared_error_sums as squared_error_sums
from .spectra import radial_average, windowed_power

# the spectral rings: defined once in spectra.py, part of this API too (scores, tests)
from .spectra import radial_bins as radial_bins


# --------------------------------------------------------------------------- SSIM
def _gauss_window(sigma: float, radius: int) -> torch.Tensor:
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return (g / g.sum()).float()


def ssim_map(pred: torch.Tensor, target: torch.Tensor, data_range: float = 2.0, sigma: float = 1.5,
             radius: int = 5) -> torch.Tensor:
    """Wang et al. (2004) SSIM with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03,
    on the valid-convolution grid (H - 2r, W - 2r)."""
    g = _gauss_window(sigma, radius).to(pred)

    def filt(x):
        return correlate1d(correlate1d(x, g, -1), g, -2)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = filt(pred), filt(target)
    vx, vy = filt(pred * pred) - mx ** 2, filt(target * target) - my ** 2
    cov = filt(pred * target) - mx * my
    return ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))


def ssim_sums(pred, target, mask, rows=None, data_range: float = 2.0, radius: int = 5):
    """(sum of SSIM over windows that are wholly valid, their count) per channel."""
    s = ssim_map(*valid_only(mask, pred, target), data_range, radius=radius)
    w = crop_rows(erode(mask, radius).expand_as(s), rows, radius)
    return channel_sum(crop_rows(s, rows, radius) * w), channel_sum(w)


# --------------------------------------------------------------------------- power spectra
def tile_spectra(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Radially averaged power spectra (N, C, n/2) of square tiles (N, C, n, n), Hann-windowed
    after removing each tile's mean (the estimate of :mod:`.spectra`); invalid pixels take the
    tile's valid mean (callers pass only tiles that are almost wholly valid)."""
    m = valid.expand_as(x).double()
    x = valid_only(valid, x)[0].double()
    mean = (x * m).sum(dim=(-2, -1), keepdim=True) / m.sum(dim=(-2, -1), keepdim=True).clamp_min(1)
    x = torch.where(m > 0, x, mean) - mean
    return radial_average(windowed_power(x))


def cut_tiles(tile: int, *images: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
    """Non-overlapping ``tile`` squares of (N, C, H, W) images on a grid from (0, 0), as
    (N * tiles, C, tile, tile); None when not one tile fits."""
    h, w = images[0].shape[-2:]
    rows, cols = h // tile, w // tile
    if rows == 0 or cols == 0:
        return None

    def cut(x):
        x = x[..., :rows * tile, :cols * tile]
        t = x.unfold(2, tile, tile).unfold(3, tile, tile).permute(0, 2, 3, 1, 4, 5)
        return t.reshape(-1, x.shape[1], tile, tile)

    return tuple(cut(x) for x in images)


def spectrum_tiles(pred, target, mask, tile: int, min_valid: float = 0.95):
    """(sum of SR spectra, sum of HR spectra, tiles used) per channel over the ``tile`` squares
    (:func:`cut_tiles`) that are at least ``min_valid`` valid; None when not one tile fits."""
    tiles = cut_tiles(tile, pred, target, mask)
    return None if tiles is None else spectrum_sums(*tiles, min_valid)


def spectrum_sums(tp, tt, tm, min_valid: float = 0.95):
    """:func:`spectrum_tiles` of tiles already cut."""
    keep = tm.mean(dim=(1, 2, 3)) >= min_valid
    if not bool(keep.any()):
        z = torch.zeros(tp.shape[1], tp.shape[-1] // 2, dtype=torch.float64)
        return z, z.clone(), 0
    tp, tt, tm = tp[keep], tt[keep], tm[keep]
    return tile_spectra(tp, tm).sum(0), tile_spectra(tt, tm).sum(0), int(keep.sum())


def high_band(k: np.ndarray, scale: int) -> np.ndarray:
    """Wavenumbers beyond the LR Nyquist limit (0.5 / scale cycles per HR pixel): the scales an SR
    method has to create, since no LR pixel carries them."""
    return k > 0.5 / scale


# --------------------------------------------------------------------------- fractions skill score
def box_sum(x: torch.Tensor, window: int) -> torch.Tensor:
    """Sum over the centred ``window`` x ``window`` box of each pixel (zero outside), same grid;
    by cumulative sums (float64), so the cost does not grow with the window."""
    r = window // 2
    c = F.pad(x.double(), (r + 1, r, r + 1, r)).cumsum(-1).cumsum(-2)
    return (c[..., window:, window:] - c[..., :-window, window:] - c[..., window:, :-window]
            + c[..., :-window, :-window])


def fractions(binary: torch.Tensor, mask: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fraction of valid pixels in the ``window`` x ``window`` neighbourhood that are in the event
    (Roberts & Lean 2008), and whether the neighbourhood has any valid pixel; same grid as input."""
    if window == 1:
        return (binary * mask).double(), mask.expand_as(binary).double()
    hits = box_sum(binary * mask, window)
    valid = box_sum(mask, window)
    return hits / valid.clamp_min(1), (valid > 0.5).double().expand_as(hits)


def fss_sums(pred_event: torch.Tensor, target_event: torch.Tensor, mask: torch.Tensor, window: int,
             rows=None):
    """(sum (Pf - Po)^2, sum Pf^2 + Po^2) per channel; FSS = 1 - first / second (1 = perfect)."""
    pred_event, target_event = valid_only(mask, pred_event, target_event)
    pf, v = fractions(pred_event, mask, window)
    po, _ = fractions(target_event, mask, window)
    w = crop_rows(v * mask.double(), rows)
    pf, po = crop_rows(pf, rows), crop_rows(po, rows)
    return channel_sum((pf - po) ** 2 * w), channel_sum((pf ** 2 + po ** 2) * w)


# --------------------------------------------------------------------------- tile seams
def seam_ratio(img, edge_cols) -> float:
    """Mean |d/dx| across the given column boundaries (between column c-1 and c) over the mean
    |d/dx| elsewhere, NaN-aware: 1 means tile edges are invisible, > 1 a seam."""
    dx = np.abs(np.diff(np.asarray(img, np.float64), axis=1))
    at = np.zeros(dx.shape[1], bool)
    at[[c - 1 for c in edge_cols]] = True
    return float(np.nanmean(dx[:, at]) / np.nanmean(dx[:, ~at]))


def tile_edge_cols(n_lr: int, tile: int, overlap: int, scale: int) -> list[int]:
    """HR columns where a tile of the plan starts or ends inside the scene."""
    from ..inference.tiling import tile_origins
    starts = tile_origins(n_lr, min(tile, n_lr), overlap)
    return sorted({c * scale for c in starts if c > 0}
                  | {(c + tile) * scale for c in starts if c + tile < n_lr})


# --------------------------------------------------------------------------- ensemble scores
def crps_ensemble(members: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per-pixel "fair" (unbiased) ensemble CRPS of members (N, ...) against ``truth`` (...):

        mean_i |X_i - y|  -  1 / (2 N (N - 1)) sum_{i,j} |X_i - X_j|

    (Ferro 2014; the expected CRPS of the ensemble's distribution, unbiased for a finite N).  The
    pair term is computed in O(N log N) from the sorted members, sum_{i,j} |X_i - X_j| =
    2 sum_i (2i - N - 1) X_(i).  One member: the absolute error (a deterministic forecast's CRPS)."""
    n = members.shape[0]
    skill = (members - truth).abs().mean(0)
    if n == 1:
        return skill
    xs = members.sort(dim=0).values
    w = (2 * torch.arange(1, n + 1, dtype=xs.dtype, device=xs.device) - n - 1)
    w = w.view(n, *([1] * (xs.dim() - 1)))
    return skill - (w * xs).sum(0) / (n * (n - 1))


def truth_ranks(members: torch.Tensor, truth: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Rank of the truth among N members (0..N: the number of members below it), ties with
    members broken uniformly at random (``generator``), so a perfect ensemble gives a flat histogram."""
    below = (members < truth).sum(0)
    ties = (members == truth).sum(0)
    tied = ties > 0
    if bool(tied.any()):
        u = torch.rand(int(tied.sum()), generator=generator, dtype=torch.float64)
        below[tied] += (u * (ties[tied] + 1).double()).long().clamp_max(ties[tied])
    return below


def spread_skill_ratio(var_sum, sq_err_sum, count, n_members: int) -> float:
    """sqrt((N + 1) / N * mean unbiased ensemble variance) / RMSE of the ensemble mean (Fortin et
    al. 2014): 1 for a statistically consistent ensemble, < 1 under-dispersive, > 1 over-dispersive."""
    var_sum, sq_err_sum, count = (float(v) for v in (var_sum, sq_err_sum, count))
    if n_members < 2 or count == 0 or sq_err_sum == 0:
        return math.nan
    return math.sqrt((n_members + 1) / n_members * var_sum / count) / math.sqrt(sq_err_sum / count)

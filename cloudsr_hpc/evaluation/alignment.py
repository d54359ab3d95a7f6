"""Sub-pixel misalignment between two images (how far the HR of a pair is from its LR)."""
from __future__ import annotations

import warnings

import numpy as np


def phase_correlation_shift(ref: np.ndarray, moved: np.ndarray) -> tuple[float, float]:
    """(d_col, d_row) such that ``moved(p) ~ ref(p - d)``: content displacement in pixels.

    Cross-power spectrum whitened by its modulus to the power 0.5: a peak sharp enough to
    locate and smooth enough for a parabolic sub-pixel fit per axis.  A Hann window keeps the
    borders from dominating.  NaN -> image mean.
    """
    a = np.where(np.isfinite(ref), ref, np.nanmean(ref)).astype(np.float64)
    b = np.where(np.isfinite(moved), moved, np.nanmean(moved)).astype(np.float64)
    win = np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1]))
    fa, fb = np.fft.fft2((a - a.mean()) * win), np.fft.fft2((b - b.mean()) * win)
    cross = fb * np.conj(fa)
    # half-whitened: sharp yet smooth peak
    corr = np.fft.ifft2(cross / np.maximum(np.abs(cross), 1e-12) ** 0.5).real
    r, c = np.unravel_index(np.argmax(corr), corr.shape)

    def refine(m1, m0, p1):
        den = m1 - 2 * m0 + p1
        return 0.5 * (m1 - p1) / den if den != 0 else 0.0

    ny, nx = corr.shape
    dr = r + refine(corr[(r - 1) % ny, c], corr[r, c], corr[(r + 1) % ny, c])
    dc = c + refine(corr[r, (c - 1) % nx], corr[r, c], corr[r, (c + 1) % nx])
    dr = dr - ny if dr > ny / 2 else dr
    dc = dc - nx if dc > nx / 2 else dc
    return float(dc), float(dr)


def pair_shift_lr_px(lr: np.ndarray, hr: np.ndarray, scale: int) -> tuple[float, float]:
    """Displacement of an HR patch relative to its LR patch, in LR pixels (HR box-averaged to LR)."""
    h, w = lr.shape
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks stay NaN
        hr_lr = np.nanmean(hr[:h * scale, :w * scale].reshape(h, scale, w, scale), axis=(1, 3))
    return phase_correlation_shift(lr, hr_lr)

"""Sub-pixel misalignment between two images (how far the HR of a pair is from its LR)."""
from __future__ import annotations

import warnings

import numpy as np
from skimage.registration import phase_cross_correlation

#: sub-pixel resolution of the shift estimate: 1/UPSAMPLE pixel (matrix-multiply DFT refinement)
UPSAMPLE = 50


def phase_correlation_shift(ref: np.ndarray, moved: np.ndarray) -> tuple[float, float]:
    """(d_col, d_row) such that ``moved(p) ~ ref(p - d)``: content displacement in pixels.

    scikit-image's ``phase_cross_correlation`` (upsampled DFT to 1/UPSAMPLE px) on the mean-removed,
    Hann-windowed images (the window keeps the borders from dominating).  Plain cross-correlation
    (``normalization=None``): full phase whitening amplifies the noise where a smooth cloud field has
    no power and misses sub-pixel shifts by > 0.2 px.  NaN -> image mean.  skimage returns the
    (row, col) shift that registers ``moved`` onto ``ref``, i.e. ``-d``.
    """
    a = np.where(np.isfinite(ref), ref, np.nanmean(ref)).astype(np.float64)
    b = np.where(np.isfinite(moved), moved, np.nanmean(moved)).astype(np.float64)
    win = np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1]))
    shift, _, _ = phase_cross_correlation((a - a.mean()) * win, (b - b.mean()) * win,
                                          upsample_factor=UPSAMPLE, normalization=None)
    return float(-shift[1]), float(-shift[0])


def pair_shift_lr_px(lr: np.ndarray, hr: np.ndarray, scale: int) -> tuple[float, float]:
    """Displacement of an HR patch relative to its LR patch, in LR pixels (HR box-averaged to LR)."""
    h, w = lr.shape
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks stay NaN
        hr_lr = np.nanmean(hr[:h * scale, :w * scale].reshape(h, scale, w, scale), axis=(1, 3))
    return phase_correlation_shift(lr, hr_lr)

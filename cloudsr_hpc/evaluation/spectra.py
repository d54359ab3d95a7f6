"""Radially averaged power spectra: the scale-by-scale view of cloud structure."""
from __future__ import annotations

import numpy as np


def radial_psd(field: np.ndarray, detrend: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Radially *averaged* 2-D power spectral density of a square-ish 2-D field.

    A Hann window suppresses the leakage of the image borders (which would otherwise impose a
    spurious k^-2 tail).  Returns (k, P) with k in cycles per pixel on integer-wavenumber bins.
    Invalid (NaN) pixels are replaced by the field mean.
    """
    f = np.asarray(field, dtype=np.float64)
    f = np.where(np.isfinite(f), f, np.nanmean(f))
    if detrend:
        f = f - f.mean()
    ny, nx = f.shape
    win = np.outer(np.hanning(ny), np.hanning(nx))
    spec = np.abs(np.fft.fft2(f * win)) ** 2 / (win ** 2).sum()
    ky, kx = np.meshgrid(np.fft.fftfreq(ny), np.fft.fftfreq(nx), indexing="ij")
    k = np.hypot(kx, ky)
    n = min(nx, ny)
    bins = np.round(k * n).astype(int)  # integer wavenumbers of the shorter side
    nbin = n // 2
    sums = np.bincount(bins.ravel(), spec.ravel(), minlength=nbin + 1)[1:nbin + 1]
    counts = np.bincount(bins.ravel(), minlength=nbin + 1)[1:nbin + 1]
    return np.arange(1, nbin + 1) / n, sums / np.maximum(counts, 1)


def spectral_slope(field: np.ndarray, k_range: tuple[float, float] = (1 / 64, 1 / 4)) -> float:
    """Least-squares slope of log P vs log k of the radially averaged PSD over ``k_range``
    (cycles/pixel).  The azimuthally *summed* (1-D equivalent) slope is this plus one."""
    k, p = radial_psd(field)
    sel = (k >= k_range[0]) & (k <= k_range[1]) & (p > 0)
    return float(np.polyfit(np.log(k[sel]), np.log(p[sel]), 1)[0])

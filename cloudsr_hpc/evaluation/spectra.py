"""Radially averaged power spectra: the scale-by-scale view of cloud structure.

The one home of the spectral estimate: :func:`windowed_power` (Hann-windowed periodogram) and
:func:`radial_average` (integer-wavenumber rings, :func:`radial_bins`).  :func:`radial_psd` applies
them to one NumPy field; ``metrics.tile_spectra`` to batches of masked tiles (Welch sums).
"""
from __future__ import annotations

import numpy as np
import torch


def radial_bins(ny: int, nx: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """Integer-wavenumber bin of each FFT coefficient of an ny x nx field (n x n when ``nx`` is None),
    in wavenumbers of the shorter side n, and the bins' k (cycles/px): 1/n ... (n//2)/n."""
    nx = ny if nx is None else nx
    n = min(ny, nx)
    k = torch.hypot(torch.fft.fftfreq(ny, dtype=torch.float64)[:, None],
                    torch.fft.fftfreq(nx, dtype=torch.float64)[None, :])
    bins = torch.round(k * n).long().clamp_max(n // 2 + 1)  # corners beyond Nyquist -> a discarded bin
    return bins, np.arange(1, n // 2 + 1) / n


def windowed_power(x: torch.Tensor) -> torch.Tensor:
    """|FFT|^2 over the last two axes of a Hann-windowed field, normalised by the window's energy
    (white noise of std s -> flat power s^2).  The window suppresses the leakage of the borders
    (which would otherwise impose a spurious k^-2 tail)."""
    ny, nx = x.shape[-2:]
    win = torch.outer(torch.hann_window(ny, periodic=False, dtype=x.dtype, device=x.device),
                      torch.hann_window(nx, periodic=False, dtype=x.dtype, device=x.device))
    return torch.fft.fft2(x * win).abs() ** 2 / (win ** 2).sum()


def radial_average(power: torch.Tensor) -> torch.Tensor:
    """Mean of a 2-D power spectrum (..., ny, nx) over the rings of :func:`radial_bins`:
    (..., n//2) for k = 1/n ... (n//2)/n (the DC ring and the corners beyond Nyquist dropped)."""
    ny, nx = power.shape[-2:]
    bins, _ = radial_bins(ny, nx)
    bins = bins.flatten().to(power.device)
    nb = min(ny, nx) // 2
    flat = power.flatten(-2)
    sums = torch.zeros(*flat.shape[:-1], nb + 2, dtype=power.dtype, device=power.device)
    sums.index_add_(-1, bins, flat)
    counts = torch.bincount(bins, minlength=nb + 2).to(power.dtype)
    return (sums / counts.clamp_min(1))[..., 1:nb + 1]


def radial_psd(field: np.ndarray, detrend: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Radially *averaged* 2-D power spectral density of a square-ish 2-D field.

    :func:`windowed_power` then :func:`radial_average`.  Returns (k, P) with k in cycles per pixel
    on integer-wavenumber bins of the shorter side.  Invalid (NaN) pixels are replaced by the field
    mean.
    """
    f = np.asarray(field, dtype=np.float64)
    f = np.where(np.isfinite(f), f, np.nanmean(f))
    if detrend:
        f = f - f.mean()
    p = radial_average(windowed_power(torch.from_numpy(f)))
    return radial_bins(*f.shape)[1], p.numpy()


def spectral_slope(field: np.ndarray, k_range: tuple[float, float] = (1 / 64, 1 / 4)) -> float:
    """Least-squares slope of log P vs log k of the radially averaged PSD over ``k_range``
    (cycles/pixel).  The azimuthally *summed* (1-D equivalent) slope is this plus one."""
    k, p = radial_psd(field)
    sel = (k >= k_range[0]) & (k <= k_range[1]) & (p > 0)
    return float(np.polyfit(np.log(k[sel]), np.log(p[sel]), 1)[0])

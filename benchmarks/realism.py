"""Realism of the synthetic archive: cloud-field statistics of REAL GOES-17 ABI imagery against the
project's SYNTHETIC default archive (the VIIRS granule of ``submit synth --pair seviri_viirs``), at
the same pixel size and on the same windows/recipe.

    python benchmarks/realism.py [--real ../shared/data/abi-real] [--synthetic-archive DIR | --slots N]
                                 [--config configs/synth_realistic.yaml] [--set synth.cloud.KEY=VALUE ...]
                                 [--quick] [--out benchmarks/results/realism.json]

~1-1.5 min on 2 CPU cores with one synthesised slot, ~25 s of it statistics (``--quick``: only the
two compared band pairs, ~10 s of statistics); each extra ``--slots`` adds ~20-35 s of synthesis and
independent synthetic windows (one slot gives only ~8 windows, a noisy sample of the synthetic field).

Data
  real       GOES-17 ABI L1b CONUS, 2019-10-27 20:01 UTC, read with satpy's ``abi_l1b`` reader
             directly (C04/C06 reflectance %, C08/C09/C10/C16 brightness temperature K), nominal
             2 km.  Only the NE Pacific (lon < -125 deg: no land) and pixels whose ground footprint
             sqrt(dx*dy) is <= ``--max-gsd-km`` (3 km; ABI pixels grow to 4x7 km at 50 N) are used.
  synthetic  the VIIRS I-band granule(s) (375 m) of the synthetic slot(s), read through
             ``cloudsr_hpc.data.readers.read_files`` into the canonical scene and block-averaged
             ``--block`` x ``--block`` (default 6 -> 2.25 km, between ABI's nominal 2 km and the
             2.3 km median footprint of the real windows; a block counts only when all its pixels
             are valid).  This is the *observed* field the models train on (truth -> PSF -> noise),
             not the latent truth raster.  ``--synthetic-archive DIR`` reuses an archive (its first
             ``--max-granules`` granules), else ``--slots`` slot(s) (default 1: 2024-06-01T12:00) are
             synthesised into a temporary directory with the CLI (``--config``/``--set`` passed to
             ``submit synth``: e.g. ``--config configs/synth_realistic.yaml``, the textured field).

Compared pairs (there is no 10-12 um window band in the shared real files)
  IR           real C16 (13.3 um, CO2 absorption band)   vs  synthetic I05 (11.45 um, window band)
  reflectance  real C06 (2.25 um, near-IR)               vs  synthetic I03 (1.61 um, near-IR)
All other bands are measured too (JSON), without a partner.

Windows: square ``--window`` x ``--window`` pixels (128 -> ~290 km) every ``--stride`` pixels, kept
when they lie wholly in the analysed domain and >= ``--min-valid`` of their pixels are finite.
Statistics (valid pixels only; spread = p25-p75 of the per-window values):

  psd_slope          least-squares slope of log P(k) vs log k of the radially averaged 2-D PSD
                     (``cloudsr_hpc.evaluation.spectra.radial_psd``: Hann window, NaN -> window mean),
                     averaged over windows (Welch) before the fit, over k = 1/64 .. 1/4 cycles/pixel
                     (wavelengths 64 .. 4 px = ~140 .. 9 km).  ``_large``: k = 1/64 .. 1/16 (~140-36 km),
                     ``_small``: k = 1/16 .. 1/4 (~36-9 km).  The per-window fits give the spread.
  psd_slope_noise_removed  the same fit after subtracting the white-noise level noise_std^2 from the
                     PSD (radial_psd's normalisation gives white noise of std s a flat P = s^2).
  noise_std          robust pixel-noise std: 1.4826 * MAD of the second differences along rows and
                     columns / sqrt(6) (exact for white noise; sparse edges do not move a median).
                     At 2 km it also holds any real sub-pixel-scale texture, so it is an upper bound.
  grad_*             |grad| per pixel: 3x3 Sobel (``cloudsr_hpc.models.fidelity.sobel_magnitude``)
                     divided by 8, i.e. a smoothed central difference in units per pixel (K/px or
                     %/px), on pixels whose 3x3 stencil is valid; mean/median/p90/p99 of all window
                     pixels pooled.
  edge_p99_over_std  p99(|grad|) / std(field) in the same window (1/px), median over windows: how
                     steep the steepest 1 % of the window is relative to its overall contrast.
  edge_top5_share    share of the window's total sum |grad| carried by its 5 % steepest pixels
                     (0.05 for uniform slopes, -> 1 when all the variation sits in sharp edges),
                     median over windows.
  cloud_fraction     (IR bands) fraction of valid pixels with BT < T_clear(lat) - ``--cloud-dt`` (7 K).
                     T_clear(lat) is the warm (clear-sky / surface) mode of the BT histogram in 2.5 deg
                     latitude bands of the analysed pixels, interpolated in latitude.  For the synthetic
                     11.45 um band (T_clear ~ 277 K at 52 N) this is the usual BT < ~270 K.  The same
                     7 K depression in the real 13.3 um CO2 band is a stricter test: CO2 absorption
                     compresses the contrast of low clouds (their tops lie under the weighting
                     function), so there it measures mid/high cloud and under-counts stratocumulus.
  cell_area_*        connected cloudy regions (8-connectivity, ``scipy.ndimage.label``) in each window,
                     area = pixels x footprint^2 [km^2]: mean and median over all cells, the area-
                     weighted mean sum(a^2)/sum(a) (the cell a random cloudy pixel belongs to), and
                     cells per 10^4 km^2.  Cells cut by the window border are counted as cut.
  integral_length_km lag at which the radially averaged, mask-aware autocorrelation of the window
                     (mean removed) first drops to 1/e, linearly interpolated, x footprint [km];
                     median over windows (windows that never reach 1/e within window/2 are left out
                     and counted).

Distances use each window's median ground footprint sqrt(dx*dy) from the lon/lat of the pixels.
Columns: real, synthetic, ratio synthetic/real, then "syn+noise": the synthetic band plus white
Gaussian noise of std sqrt(noise_std_real^2 - noise_std_syn^2) (same windows, same cloud threshold),
which separates what sensor noise explains from what the cloud structure itself does.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import io
import re
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from common import save  # noqa: E402

from cloudsr_hpc.core.resources import peak_rss_mb  # noqa: E402
from cloudsr_hpc.evaluation.spectra import radial_psd  # noqa: E402

REAL_BT = ["C08", "C09", "C10", "C16"]
REAL_REFL = ["C04", "C06"]
SYN_BANDS = ["I01", "I02", "I03", "I04", "I05"]
PAIRS = {  # name: (real band, synthetic band, what)
    "ir": ("C16", "I05",
           "brightness temperature [K]: ABI C16 13.3 um (CO2 band) vs VIIRS I05 11.45 um (window)"),
    "reflectance": ("C06", "I03", "reflectance [%]: ABI C06 2.25 um vs VIIRS I03 1.61 um (both near-IR)"),
}
K_FULL, K_LARGE, K_SMALL = (1 / 64, 1 / 4), (1 / 64, 1 / 16), (1 / 16, 1 / 4)
EARTH_KM = 6371.0


# --------------------------------------------------------------------------- data
def footprint_km(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """sqrt(dx * dy) [km] per pixel from the great-circle distances to the next column and row."""
    lam, phi = np.radians(lon), np.radians(lat)

    def hav(p1, l1, p2, l2):
        a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin((l2 - l1) / 2) ** 2
        return 2 * EARTH_KM * np.arcsin(np.sqrt(np.clip(a, 0, 1)))

    dx = hav(phi[:, :-1], lam[:, :-1], phi[:, 1:], lam[:, 1:])
    dy = hav(phi[:-1], lam[:-1], phi[1:], lam[1:])
    dx = np.concatenate([dx, dx[:, -1:]], 1)
    dy = np.concatenate([dy, dy[-1:]], 0)
    return np.sqrt(dx * dy)


def read_real(real_dir: Path, bands: list[str]) -> dict:
    """ABI L1b bands through satpy directly, plus lon/lat: {band: array, 'lon', 'lat'}."""
    import satpy
    files = sorted(glob.glob(str(real_dir / "OR_ABI-L1b-RadC-*_G17_*.nc")))
    if not files:
        raise SystemExit(f"error: {real_dir}: no GOES-17 ABI CONUS L1b files (OR_ABI-L1b-RadC-*_G17_*.nc)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scn = satpy.Scene(reader="abi_l1b", filenames=files)
        out = {}
        for b in bands:
            scn.load([b], calibration="brightness_temperature" if b in REAL_BT else "reflectance")
            out[b] = np.asarray(scn[b].values, dtype=np.float32)
        lon, lat = scn[bands[0]].attrs["area"].get_lonlats()
    out["lon"], out["lat"] = np.asarray(lon), np.asarray(lat)
    out["time"] = scn.start_time.isoformat()
    out["files"] = [Path(f).name for f in files]
    return out


def synthesise(archive: Path, slots: int, config: str | None = None, sets: list[str] | None = None) -> float:
    """``submit synth`` of ``slots`` slots at 12:00 UTC on consecutive days from 2024-06-01 (a day
    apart the synthetic cloud fields are independent: 3 h decorrelation, ~1000 km advection), with
    ``--config`` and ``--set`` overrides passed on."""
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "cloudsr_hpc.submit", "synth", "--pair", "seviri_viirs",
           "--start", "2024-06-01T12:00", "--archive", str(archive)]
    cmd += ["--config", config] if config else []
    cmd += [a for kv in sets or [] for a in ("--set", kv)]
    if slots > 1:
        cmd += ["--end", f"2024-06-{slots:02d}T12:00", "--every", "1d"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"error: {' '.join(cmd[2:])} failed:\n{p.stderr[-2000:]}")
    return time.perf_counter() - t0


def read_synthetic(archive: Path, bands: list[str], block: int, max_granules: int) -> dict:
    """The archive's first ``max_granules`` VIIRS granules (by start time) as canonical scenes,
    block-averaged ``block`` x ``block`` and stacked row-wise with a NaN row between granules (no
    window can straddle two)."""
    from cloudsr_hpc.data.readers import read_files
    from cloudsr_hpc.data.sensors import load_registry
    files = sorted(glob.glob(str(archive / "**" / "V*0[23]IMG.A*.nc"), recursive=True))
    stamps = sorted({m.group(1) for f in files if (m := re.search(r"\.A(\d{7}\.\d{4})\.", Path(f).name))})
    if not stamps:
        raise SystemExit(f"error: {archive}: no VIIRS I-band granule (V*02IMG/V*03IMG) in the archive")
    reg = load_registry()
    parts, out = [], {"time": [], "files": [], "native_shape": []}
    for stamp in stamps[:max_granules]:
        granule = [f for f in files if f".A{stamp}." in Path(f).name]
        ds = read_files(granule, reg.sensor("viirs"), "l1b", bands)
        part = {b: block_mean(ds[b].values, block) for b in bands}
        part["lon"] = block_mean(ds["lon"].values.astype(np.float64), block)
        part["lat"] = block_mean(ds["lat"].values.astype(np.float64), block)
        parts.append(part)
        out["time"].append(ds.attrs["start_time"])
        out["files"] += [Path(f).name for f in granule]
        out["native_shape"].append(list(ds[bands[0]].shape))
    width = max(p["lat"].shape[1] for p in parts)
    for key in bands + ["lon", "lat"]:
        rows = []
        for p in parts:
            a = p[key]
            rows += [np.pad(a, ((0, 1), (0, width - a.shape[1])), constant_values=np.nan)]
        out[key] = np.concatenate(rows)[:-1]
    return out


def block_mean(a: np.ndarray, n: int) -> np.ndarray:
    """n x n block average; NaN unless every pixel of the block is finite."""
    h, w = (a.shape[0] // n) * n, (a.shape[1] // n) * n
    return a[:h, :w].reshape(h // n, n, w // n, n).mean(axis=(1, 3))  # a NaN anywhere -> NaN


def windows(domain: np.ndarray, valid: np.ndarray, n: int, stride: int,
            min_valid: float) -> list[tuple[int, int]]:
    """Top-left corners of n x n windows inside ``domain`` with >= min_valid finite pixels."""
    out = []
    for r in range(0, domain.shape[0] - n + 1, stride):
        for c in range(0, domain.shape[1] - n + 1, stride):
            if domain[r:r + n, c:c + n].all() and valid[r:r + n, c:c + n].mean() >= min_valid:
                out.append((r, c))
    return out


# --------------------------------------------------------------------------- statistics
def sobel_per_pixel(w: np.ndarray) -> np.ndarray:
    """|grad| in units per pixel on the (n-2)^2 interior; NaN where the 3x3 stencil is not all valid."""
    import torch

    from cloudsr_hpc.models.fidelity import sobel_magnitude
    ok = np.isfinite(w)
    x = torch.from_numpy(np.where(ok, w, 0.0).astype(np.float64))[None, None]
    g = sobel_magnitude(x)[0, 0].numpy() / 8.0
    stencil = ndimage.minimum_filter(ok.astype(np.uint8), 3, mode="constant")[1:-1, 1:-1].astype(bool)
    return np.where(stencil, g, np.nan)


def fit_slope(k: np.ndarray, p: np.ndarray, k_range: tuple[float, float]) -> float:
    sel = (k >= k_range[0] * (1 - 1e-9)) & (k <= k_range[1] * (1 + 1e-9)) & (p > 0)
    return float(np.polyfit(np.log(k[sel]), np.log(p[sel]), 1)[0])


def acf_length_px(w: np.ndarray) -> float:
    """First lag [px] where the mask-aware, radially averaged autocorrelation drops to 1/e."""
    m = np.isfinite(w).astype(np.float64)
    x = np.where(m > 0, w - np.nanmean(w), 0.0)
    n0, n1 = w.shape
    s = (2 * n0, 2 * n1)  # zero padding: no wrap-around
    fx, fm = np.fft.rfft2(x, s), np.fft.rfft2(m, s)
    num = np.fft.irfft2(np.abs(fx) ** 2, s)
    den = np.fft.irfft2(np.abs(fm) ** 2, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        acf = num / np.maximum(den, 1.0)
    acf = acf / acf[0, 0]
    ly = np.fft.fftfreq(s[0]) * s[0]
    lx = np.fft.fftfreq(s[1]) * s[1]
    r = np.hypot(ly[:, None], lx[None, :])
    keep = (r <= min(n0, n1) // 2) & (den > 0.25 * den[0, 0])
    bins = np.round(r[keep]).astype(int)
    prof = np.bincount(bins, acf[keep]) / np.maximum(np.bincount(bins), 1)
    below = np.nonzero(prof < 1 / np.e)[0]
    if not len(below):
        return np.nan
    j = below[0]
    a, b = prof[j - 1], prof[j]
    return float(j - 1 + (a - 1 / np.e) / (a - b))


def clear_sky_reference(bt: np.ndarray, lat: np.ndarray, band_deg: float = 2.5) -> tuple[np.ndarray, list]:
    """T_clear(lat): warm mode of the BT histogram (0.5 K bins, 3-bin smoothing, above the band's
    median) per ``band_deg`` latitude band, linearly interpolated in latitude."""
    ok = np.isfinite(bt) & np.isfinite(lat)
    lo, hi = np.floor(lat[ok].min() / band_deg) * band_deg, np.ceil(lat[ok].max() / band_deg) * band_deg
    centres, modes = [], []
    for a in np.arange(lo, hi, band_deg):
        v = bt[ok & (lat >= a) & (lat < a + band_deg)]
        if v.size < 2000:
            continue
        med = np.median(v)
        edges = np.arange(np.floor(med), np.ceil(v.max()) + 0.5, 0.5)
        if len(edges) < 4:
            continue
        h, _ = np.histogram(v, edges)
        h = np.convolve(h, np.ones(3) / 3, mode="same")
        centres.append(a + band_deg / 2)
        modes.append(float(edges[np.argmax(h)] + 0.25))
    ref = np.interp(lat, centres, modes)
    return ref, [[round(c, 2), round(m, 2)] for c, m in zip(centres, modes, strict=True)]


def q(a, p) -> float:
    a = np.asarray(a, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(np.percentile(a, p)) if a.size else float("nan")


def band_stats(field: np.ndarray, gsd: np.ndarray, wins: list[tuple[int, int]], n: int,
               cloud_mask: np.ndarray | None = None) -> dict:
    """All statistics of one band over the windows (see the module docstring)."""
    psd_sum, slopes, slopes_l, slopes_s = None, [], [], []
    grads, p99_std, top5, lengths, n_nolength, second_diffs = [], [], [], [], 0, []
    cells, cloudy_px, valid_px, area_km2, cf_win = [], 0, 0, 0.0, []
    for r, c in wins:
        w = field[r:r + n, c:c + n]
        px_km = float(np.nanmedian(gsd[r:r + n, c:c + n]))
        k, p = radial_psd(w)
        psd_sum = p if psd_sum is None else psd_sum + p
        slopes.append(fit_slope(k, p, K_FULL))
        slopes_l.append(fit_slope(k, p, K_LARGE))
        slopes_s.append(fit_slope(k, p, K_SMALL))
        g = sobel_per_pixel(w)
        gv = g[np.isfinite(g)]
        for d in (w[1:-1] * 2 - w[:-2] - w[2:], w[:, 1:-1] * 2 - w[:, :-2] - w[:, 2:]):
            second_diffs.append(d[np.isfinite(d)])
        grads.append(gv)
        sd = float(np.nanstd(w))
        if gv.size and sd > 0:
            p99_std.append(np.percentile(gv, 99) / sd)
            top = np.sort(gv)[::-1][:max(1, int(round(0.05 * gv.size)))]
            top5.append(top.sum() / gv.sum())
        ell = acf_length_px(w)
        if np.isfinite(ell):
            lengths.append(ell * px_km)
        else:
            n_nolength += 1
        if cloud_mask is not None:
            cm = cloud_mask[r:r + n, c:c + n] & np.isfinite(w)
            nv = int(np.isfinite(w).sum())
            cloudy_px += int(cm.sum())
            valid_px += nv
            area_km2 += nv * px_km ** 2
            cf_win.append(cm.sum() / max(nv, 1))
            lab, nlab = ndimage.label(cm, structure=np.ones((3, 3), bool))
            if nlab:
                cells.append(np.bincount(lab.ravel())[1:] * px_km ** 2)
    k = radial_psd(field[wins[0][0]:wins[0][0] + n, wins[0][1]:wins[0][1] + n])[0]
    psd = psd_sum / len(wins)
    d2 = np.concatenate(second_diffs)
    noise = float(1.4826 * np.median(np.abs(d2 - np.median(d2))) / np.sqrt(6.0))
    g = np.concatenate(grads)
    out = {
        "windows": len(wins),
        "psd_slope": fit_slope(k, psd, K_FULL),
        "psd_slope_large": fit_slope(k, psd, K_LARGE),
        "psd_slope_small": fit_slope(k, psd, K_SMALL),
        "psd_slope_noise_removed": fit_slope(k, psd - noise ** 2, K_FULL),  # white noise s: P = s^2 here
        "noise_std": noise,
        "grad_mean": float(g.mean()), "grad_median": float(np.median(g)),
        "grad_p90": float(np.percentile(g, 90)), "grad_p99": float(np.percentile(g, 99)),
        "edge_p99_over_std": q(p99_std, 50), "edge_top5_share": q(top5, 50),
        "integral_length_km": q(lengths, 50),
        "field_mean": float(np.nanmean([np.nanmean(field[r:r + n, c:c + n]) for r, c in wins])),
        "field_std_in_window": float(np.nanmedian([np.nanstd(field[r:r + n, c:c + n]) for r, c in wins])),
        "footprint_km": float(np.nanmedian([np.nanmedian(gsd[r:r + n, c:c + n]) for r, c in wins])),
        "windows_without_integral_length": n_nolength,
        "spread": {"psd_slope": [q(slopes, 25), q(slopes, 75)],
                   "psd_slope_large": [q(slopes_l, 25), q(slopes_l, 75)],
                   "psd_slope_small": [q(slopes_s, 25), q(slopes_s, 75)],
                   "edge_p99_over_std": [q(p99_std, 25), q(p99_std, 75)],
                   "edge_top5_share": [q(top5, 25), q(top5, 75)],
                   "integral_length_km": [q(lengths, 25), q(lengths, 75)]},
        "psd_mean": {"k_cycles_per_px": [round(float(x), 5) for x in k],
                     "p": [float(f"{x:.4g}") for x in psd]},
    }
    if cloud_mask is not None:
        a = np.concatenate(cells) if cells else np.zeros(0)
        out.update({
            "cloud_fraction": cloudy_px / max(valid_px, 1),
            "cell_area_mean_km2": float(a.mean()) if a.size else float("nan"),
            "cell_area_median_km2": float(np.median(a)) if a.size else float("nan"),
            "cell_area_weighted_km2": float((a ** 2).sum() / a.sum()) if a.size else float("nan"),
            "cells_per_1e4_km2": float(a.size / area_km2 * 1e4),
        })
        out["spread"]["cloud_fraction"] = [q(cf_win, 25), q(cf_win, 75)]
    return out


# --------------------------------------------------------------------------- report
ROWS = [  # key, label, format
    ("psd_slope", "PSD slope k=1/64..1/4 px^-1", "{:.2f}"),
    ("psd_slope_large", "PSD slope k=1/64..1/16 (~140-36 km)", "{:.2f}"),
    ("psd_slope_small", "PSD slope k=1/16..1/4 (~36-9 km)", "{:.2f}"),
    ("psd_slope_noise_removed", "PSD slope, white noise removed", "{:.2f}"),
    ("noise_std", "pixel noise std (robust) [unit]", "{:.3f}"),
    ("grad_mean", "|grad| mean [unit/px]", "{:.3f}"),
    ("grad_median", "|grad| median [unit/px]", "{:.3f}"),
    ("grad_p90", "|grad| p90 [unit/px]", "{:.3f}"),
    ("grad_p99", "|grad| p99 [unit/px]", "{:.3f}"),
    ("edge_p99_over_std", "edge: p99|grad| / std [1/px]", "{:.3f}"),
    ("edge_top5_share", "edge: sum|grad| share of top 5%", "{:.3f}"),
    ("cloud_fraction", "cloud fraction (BT < Tclr-dT)", "{:.3f}"),
    ("cell_area_mean_km2", "cloud cell area mean [km2]", "{:.0f}"),
    ("cell_area_median_km2", "cloud cell area median [km2]", "{:.0f}"),
    ("cell_area_weighted_km2", "cloud cell area, area-weighted [km2]", "{:.0f}"),
    ("cells_per_1e4_km2", "cloud cells per 1e4 km2", "{:.2f}"),
    ("integral_length_km", "integral length (ACF=1/e) [km]", "{:.1f}"),
    ("field_std_in_window", "std within window [unit]", "{:.2f}"),
    ("field_mean", "mean [unit]", "{:.1f}"),
    ("footprint_km", "pixel footprint sqrt(dx*dy) [km]", "{:.2f}"),
]


def fmt_spread(s, f) -> str:
    return "" if s is None else f"{f.format(s[0])}..{f.format(s[1])}"


def table(title: str, real: dict, syn: dict, noisy: dict) -> list[str]:
    lines = [title,
             f"  {'statistic':36s} {'real':>8s} {'synthetic':>9s} {'ratio':>6s} {'syn+noise':>9s} "
             f"{'ratio':>6s}"
                    f"  {'real p25..p75':>14s} {'syn p25..p75':>14s}"]

    def ratio(a, b):
        return b / a if a not in (0, None) and np.isfinite(a) and np.isfinite(b) else float("nan")

    for key, label, f in ROWS:
        if key not in real or key not in syn:
            continue
        a, b, c = real[key], syn[key], noisy[key]
        lines.append(f"  {label:36s} {f.format(a):>8s} {f.format(b):>9s} {ratio(a, b):6.2f} "
                     f"{f.format(c):>9s} {ratio(a, c):6.2f}  {fmt_spread(real['spread'].get(key), f):>14s} "
                     f"{fmt_spread(syn['spread'].get(key), f):>14s}")
    lines.append(f"  ratio = synthetic / real.  syn+noise: the synthetic band plus white noise of std "
                 f"{noisy['added_noise_std']:.3f} (brings its pixel noise to the real one).  Windows: real "
                 f"{real['windows']}, synthetic {syn['windows']}; ACF never reached 1/e in real "
                 f"{real['windows_without_integral_length']}, synthetic "
                 f"{syn['windows_without_integral_length']}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real", default="../shared/data/abi-real",
                    help="real ABI directory (relative to the repo root)")
    ap.add_argument("--synthetic-archive", default=None,
                    help="reuse this synthetic archive (else synthesise --slots slots into a "
                         "temporary directory)")
    ap.add_argument("--slots", type=int, default=1, choices=range(1, 31), metavar="1..30",
                    help="without --synthetic-archive: synthesise this many slots, a day apart (~20 s each)")
    ap.add_argument("--config", default=None,
                    help="synthesis: the config of submit synth (default: its own, configs/pairs.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="synthesis: a submit synth override, e.g. synth.cloud.tau0=12 (repeatable)")
    ap.add_argument("--max-granules", type=int, default=8,
                    help="synthetic: use up to this many VIIRS granules")
    ap.add_argument("--block", type=int, default=6,
                    help="block-averaging factor of the 375 m VIIRS scene (6 -> 2.25 km)")
    ap.add_argument("--window", type=int, default=128, help="square window side [px]")
    ap.add_argument("--stride", type=int, default=None, help="window step [px] (default window/2)")
    ap.add_argument("--min-valid", type=float, default=0.98, help="minimum finite fraction of a window")
    ap.add_argument("--max-gsd-km", type=float, default=3.0, help="real: largest pixel footprint used")
    ap.add_argument("--real-lon-max", type=float, default=-125.0,
                    help="real: only lon < this (ocean); 180 = all")
    ap.add_argument("--cloud-dt", type=float, default=7.0, help="cloudy: BT < T_clear(lat) - this [K]")
    ap.add_argument("--quick", action="store_true", help="only the two compared band pairs")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "realism.json"))
    args = ap.parse_args()
    n = args.window
    stride = args.stride or n // 2
    t_start = time.perf_counter()
    timing = {}

    real_dir = (ROOT / args.real).resolve() if not Path(args.real).is_absolute() else Path(args.real)
    real_bands = [p[0] for p in PAIRS.values()] if args.quick else REAL_REFL + REAL_BT
    syn_bands = [p[1] for p in PAIRS.values()] if args.quick else SYN_BANDS
    t0 = time.perf_counter()
    real = read_real(real_dir, real_bands)
    timing["read_real_s"] = round(time.perf_counter() - t0, 2)

    with tempfile.TemporaryDirectory() as tmp:
        if args.synthetic_archive:
            archive = Path(args.synthetic_archive)
        else:
            archive = Path(tmp) / "archive"
            timing["synthesise_s"] = round(synthesise(archive, args.slots, args.config, args.set), 2)
        t0 = time.perf_counter()
        syn = read_synthetic(archive, syn_bands, args.block, args.max_granules)
        timing["read_synthetic_s"] = round(time.perf_counter() - t0, 2)

    t0 = time.perf_counter()
    gsd = {"real": footprint_km(real["lon"], real["lat"]), "synthetic": footprint_km(syn["lon"], syn["lat"])}
    lon_w = np.where(real["lon"] > 0, real["lon"] - 360.0, real["lon"])
    domain = {"real": ((lon_w < args.real_lon_max) & (gsd["real"] <= args.max_gsd_km)
                       & np.isfinite(real["lat"])),
              "synthetic": np.isfinite(syn["lat"])}
    valid = {"real": np.isfinite(real[real_bands[0]]), "synthetic": np.isfinite(syn[syn_bands[0]])}
    for b in real_bands:
        valid["real"] &= np.isfinite(real[b])
    for b in syn_bands:
        valid["synthetic"] &= np.isfinite(syn[b])
    wins = {s: windows(domain[s], valid[s], n, stride, args.min_valid) for s in ("real", "synthetic")}
    for s in wins:
        if not wins[s]:
            raise SystemExit(f"error: no {n}x{n} window of the {s} scene is valid; lower --window "
                             "or --min-valid")

    data = {"real": real, "synthetic": syn}
    ir = {"real": PAIRS["ir"][0], "synthetic": PAIRS["ir"][1]}
    cloud_ref, clear_ref = {}, {}
    for s in ("real", "synthetic"):
        used = np.zeros(domain[s].shape, bool)
        for r, c in wins[s]:
            used[r:r + n, c:c + n] = True
        bt = np.where(used, data[s][ir[s]], np.nan)
        ref, table_lat = clear_sky_reference(bt, data[s]["lat"])
        cloud_ref[s] = ref - args.cloud_dt
        clear_ref[s] = {"band": ir[s], "t_clear_by_lat": table_lat,
                        "threshold_k_range": [round(q(np.where(used, ref, np.nan), 0) - args.cloud_dt, 2),
                                              round(q(np.where(used, ref, np.nan), 100) - args.cloud_dt, 2)]}

    def cloudy(s: str, bt: np.ndarray) -> np.ndarray:
        return np.isfinite(bt) & (bt < cloud_ref[s])

    stats = {"real": {}, "synthetic": {}, "synthetic_plus_real_noise": {}}
    for s, bands in (("real", real_bands), ("synthetic", syn_bands)):
        for b in bands:
            stats[s][b] = band_stats(data[s][b], gsd[s], wins[s], n,
                                     cloudy(s, data[s][b]) if b == ir[s] else None)
    # counterfactual: the synthetic band plus white noise that brings its noise_std to the real partner's
    rng = np.random.default_rng(0)
    for rb, sb, _ in PAIRS.values():
        gap = stats["real"][rb]["noise_std"] ** 2 - stats["synthetic"][sb]["noise_std"] ** 2
        sigma = float(np.sqrt(max(gap, 0.0)))
        noisy = syn[sb] + rng.standard_normal(syn[sb].shape).astype(np.float32) * sigma
        mask = cloudy("synthetic", noisy) if sb == ir["synthetic"] else None
        stats["synthetic_plus_real_noise"][sb] = band_stats(noisy, gsd["synthetic"], wins["synthetic"], n,
                                                            mask)
        stats["synthetic_plus_real_noise"][sb]["added_noise_std"] = sigma
    timing["statistics_s"] = round(time.perf_counter() - t0, 2)
    timing["total_s"] = round(time.perf_counter() - t_start, 2)

    res = {
        "what": "cloud-field statistics, real GOES-17 ABI vs the synthetic archive's VIIRS granule, "
                "same pixel size",
        "real": {"dir": str(args.real), "time": real["time"], "files": real["files"],
                 "domain": f"lon < {args.real_lon_max}, footprint <= {args.max_gsd_km} km",
                 "shape": list(real[real_bands[0]].shape)},
        "synthetic": {"archive": str(args.synthetic_archive or "temporary: submit synth --pair "
                                                               f"seviri_viirs, {args.slots} "
                                                              f"slot(s) 12:00 UTC daily from 2024-06-01"),
                      "config": args.config, "set": args.set,
                      "time": syn["time"], "files": syn["files"], "native_shape_375m": syn["native_shape"],
                      "block": args.block, "shape": list(syn[syn_bands[0]].shape)},
        "settings": {"window_px": n, "stride_px": stride, "min_valid": args.min_valid,
                     "cloud_dt_k": args.cloud_dt,
                     "psd_k_ranges_cycles_per_px": {"full": K_FULL, "large": K_LARGE, "small": K_SMALL},
                     "gradient": "Sobel/8 per pixel", "cell_connectivity": 8},
        "cloud_mask": clear_ref,
        "pairs": {name: {"real": rb, "synthetic": sb, "what": what}
                  for name, (rb, sb, what) in PAIRS.items()},
        "stats": stats,
        "timing_s": timing,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    for s in stats:  # keep the JSON readable: the mean spectra only for the compared bands
        for b, d in stats[s].items():
            if s == "synthetic_plus_real_noise" or b not in {p[i] for p in PAIRS.values() for i in (0, 1)}:
                d.pop("psd_mean")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(io.StringIO()):  # common.save also prints the whole JSON: too long here
        save(res, args.out)

    fp_r = stats["real"][PAIRS["ir"][0]]["footprint_km"]
    fp_s = stats["synthetic"][PAIRS["ir"][1]]["footprint_km"]
    lines = [f"real: GOES-17 ABI CONUS {real['time']} (NE Pacific, lon < {args.real_lon_max}, footprint <= "
             f"{args.max_gsd_km} km, median {fp_r:.2f} km)",
             f"synthetic: VIIRS granule(s) {', '.join(syn['time'])} (375 m, block-averaged "
             f"{args.block}x{args.block} -> {fp_s:.2f} km)",
             f"windows {n}x{n} px every {stride} px; PSD slopes of the window-averaged radially "
             "averaged 2-D PSD",
             "NOTE: ABI C16 (13.3 um) is a CO2 absorption band and the synthetic IR band (I05, 11.45 um) a "
             "window band; the shared real files have no window band (C13/C14/C15).  CO2 absorption lowers "
             "clear-sky BT and hides/compresses low clouds, so levels, gradients and cloud fraction of C16 "
             "are not a like-for-like reference; spectral slope, edge sharpness and length scales are the "
             "more comparable figures.",
             f"cloud mask: BT < T_clear(lat) - {args.cloud_dt:g} K; thresholds used: real C16 "
             f"{clear_ref['real']['threshold_k_range'][0]:.1f}.."
             f"{clear_ref['real']['threshold_k_range'][1]:.1f} K, "
             f"synthetic I05 {clear_ref['synthetic']['threshold_k_range'][0]:.1f}.."
             f"{clear_ref['synthetic']['threshold_k_range'][1]:.1f} K", ""]
    for name, (rb, sb, what) in PAIRS.items():
        lines += table(f"[{name}] {what}", stats["real"][rb], stats["synthetic"][sb],
                       stats["synthetic_plus_real_noise"][sb]) + [""]
    if not args.quick:
        lines.append("all bands (no partner): psd_slope (large / small) | |grad| median, p99 | p99/std | "
                     "top5 | L_1/e km")
        for s in ("real", "synthetic"):
            for b, d in stats[s].items():  # noqa: B007
                lines.append(f"  {s:9s} {b}: {d['psd_slope']:6.2f} ({d['psd_slope_large']:5.2f} / "
                             f"{d['psd_slope_small']:5.2f}) | {d['grad_median']:6.3f} {d['grad_p99']:6.3f} | "
                             f"{d['edge_p99_over_std']:5.2f} | {d['edge_top5_share']:5.3f} | "
                             f"{d['integral_length_km']:6.1f}")
    lines.append(f"timing {timing}, peak RSS {res['peak_rss_mb']} MB; wrote {args.out}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""All of a method's measures over many patches or row bands, combined exactly (additive sums).

``ScoreSums.add`` takes normalised SR/HR blocks with a validity mask; ``result`` turns the sums into
per-channel values and one value over all channels:
  psnr      10 log10(range^2 / MSE) over ``data_range`` (all channels: from the total error)
  ssim      mean SSIM over wholly valid 11x11 windows
  grad      the paper's gradient-preservation ratio, sum |Sobel SR| / sum |Sobel HR| (ideal 1)
  spectrum  high-band power ratio: summed radially averaged PSD of SR / of HR at wavenumbers beyond
            the LR Nyquist limit (ideal 1; < 1 is missing fine structure, > 1 invented noise)
  fss       fractions skill score of cloud masks (physical thresholds per quantity), averaged
            over the thresholds, per neighbourhood window (1 perfect, 0 no skill)
  lpips     mean LPIPS over tiles (None when the backbone is not staged)

``EnsembleSums`` does the same for the N members of a stochastic method (fair CRPS, MAE of member 0,
spread-skill ratio, rank histogram of the truth); one member gives a deterministic method's MAE.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..schema import EvaluateConfig
from . import metrics as M


@dataclass(frozen=True)
class Event:
    channel: int
    threshold: float  # physical units
    below: bool  # event where the value is below (cold BT) or above (bright reflectance)
    norm_threshold: float

    @property
    def label(self) -> str:
        return f"{'<' if self.below else '>'}{self.threshold:g}"


def cloud_events(quantities: list[str], norm: tuple[list[float], list[float]], cfg) -> list[Event]:
    """The FSS events of each channel, thresholds mapped into its normalised units."""
    out = []
    for c, q in enumerate(quantities):
        below = q == "brightness_temperature"
        thresholds = (cfg.brightness_temperature_below if below
                      else cfg.reflectance_above if q == "reflectance" else [])
        lo, hi = norm[0][c], norm[1][c]
        out += [Event(c, float(t), below, 2.0 * (t - lo) / (hi - lo) - 1.0) for t in thresholds]
    return out


class ScoreSums:
    def __init__(self, channels: list[str], quantities: list[str], norm, scale: int, cfg: EvaluateConfig,
                 perceptual=None):
        self.channels, self.scale, self.cfg, self.perceptual = channels, scale, cfg, perceptual
        c = len(channels)
        z = lambda *s: torch.zeros(*s, dtype=torch.float64)  # noqa: E731
        self.events = cloud_events(quantities, norm, cfg.fss)
        self.sq, self.n = z(c), z(c)
        self.ssim, self.ssim_n = z(c), z(c)
        self.gp, self.gt = z(c), z(c)
        nk = cfg.spectrum_tile // 2
        self.quantities = quantities
        self.psd_p, self.psd_t, self.psd_n = z(c, nk), z(c, nk), z(c)
        self.fss_num = {w: z(len(self.events)) for w in cfg.fss.windows}
        self.fss_den = {w: z(len(self.events)) for w in cfg.fss.windows}
        self.lp, self.lp_n = z(c), z(c)

    @property
    def halo(self) -> int:
        """Rows of context a block needs above and below the rows it owns."""
        return max([5, 1] + [w // 2 for w in self.cfg.fss.windows])

    @torch.no_grad()
    def add(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
            rows: tuple[int, int] | None = None):
        """Add (N, C, H, W) normalised blocks; ``mask`` (N, 1 or C, H, W) is the validity of every
        channel or of each (a reflectance channel at night has none); ``rows`` = the rows this block
        owns (others are halo)."""
        pred, target, mask = pred.float(), target.float(), mask.float()
        own = slice(*rows) if rows else slice(None)
        per_channel = mask.shape[1] > 1
        for c in range(pred.shape[1]):  # channel by channel: a full-disk band's temporaries stay small
            p, t = pred[:, c:c + 1], target[:, c:c + 1]
            m = mask[:, c:c + 1] if per_channel else mask
            for acc, (a, b) in (((self.sq, self.n), M.squared_error_sums(p, t, m, rows)),
                                ((self.ssim, self.ssim_n), M.ssim_sums(p, t, m, rows, self.cfg.data_range)),
                                ((self.gp, self.gt), M.gradient_sums(p, t, m, rows))):
                acc[0][c] += a[0]
                acc[1][c] += b[0]
            tiles = M.cut_tiles(self.cfg.spectrum_tile, p[..., own, :], t[..., own, :], m[..., own, :])
            if tiles is None:
                continue
            sp, st, n_tiles = M.spectrum_sums(*tiles)
            self.psd_p[c] += sp[0]
            self.psd_t[c] += st[0]
            self.psd_n[c] += n_tiles
            if self.perceptual is not None:
                lp, n = self.perceptual.per_channel(*tiles)
                self.lp[c] += lp[0]
                self.lp_n[c] += n[0]
        for i, e in enumerate(self.events):  # one event at a time: float64 box sums of a band are large
            ev_p, ev_t = ((x[:, e.channel:e.channel + 1] < e.norm_threshold) if e.below else
                          (x[:, e.channel:e.channel + 1] > e.norm_threshold) for x in (pred, target))
            for w in self.cfg.fss.windows:
                m = mask[:, e.channel:e.channel + 1] if per_channel else mask
                num, den = M.fss_sums(ev_p.float(), ev_t.float(), m, w, rows)
                self.fss_num[w][i] += num[0]
                self.fss_den[w][i] += den[0]

    # -- results
    def spectra(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(k cycles/px, mean SR PSD (C, K), mean HR PSD (C, K))."""
        _, k = M.radial_bins(self.cfg.spectrum_tile)
        n = self.psd_n.clamp_min(1)[:, None]
        return k, (self.psd_p / n).numpy(), (self.psd_t / n).numpy()

    def result(self) -> dict:
        k, pp, pt = self.spectra()
        hb = M.high_band(k, self.scale)
        with np.errstate(invalid="ignore", divide="ignore"):
            spec_c = pp[:, hb].sum(1) / pt[:, hb].sum(1)
            spec_all = pp[:, hb].sum() / pt[:, hb].sum()
        nan = float("nan")

        per = {
            "psnr": M.psnr_from(self.sq, self.n, self.cfg.data_range).numpy(),
            "ssim": (self.ssim / self.ssim_n).numpy(),
            "grad": (self.gp / self.gt).numpy(),
            "spectrum": np.where(self.psd_n.numpy() > 0, spec_c, nan),
            "lpips": ((self.lp / self.lp_n).numpy() if self.perceptual is not None
                      else np.full(len(self.channels), nan)),
        }
        fss_ev = {w: 1.0 - (self.fss_num[w] / self.fss_den[w]).numpy() for w in self.cfg.fss.windows}
        per_fss = {}
        for w, v in fss_ev.items():
            per_fss[w] = np.array([np.nanmean([v[i] for i, e in enumerate(self.events) if e.channel == c])
                                   if any(e.channel == c for e in self.events) else nan
                                   for c in range(len(self.channels))])
        overall = {
            "psnr": float(M.psnr_from(self.sq.sum(), self.n.sum(), self.cfg.data_range)),
            "ssim": float(self.ssim.sum() / self.ssim_n.sum()),
            "grad": float(self.gp.sum() / self.gt.sum()),
            "spectrum": float(spec_all) if float(self.psd_n.sum()) else nan,
            "lpips": (float(np.nanmean(per["lpips"]))
                      if self.perceptual is not None and float(self.lp_n.sum()) else None),
            "fss": {w: float(np.nanmean(v)) if len(v) else nan for w, v in fss_ev.items()},
        }
        return {"overall": overall,
                "channels": {name: {**{m: float(per[m][c]) for m in per},
                                    "fss": {w: float(per_fss[w][c]) for w in per_fss}}
                             for c, name in enumerate(self.channels)},
                "fss_events": {f"{self.channels[e.channel]} {e.label}":
                               {w: float(fss_ev[w][i]) for w in fss_ev} for i, e in enumerate(self.events)},
                "groups": self.groups(per),
                "tiles": {"spectrum": int(self.psd_n.max()),
                          "lpips": int(self.lp_n.max()) if self.perceptual is not None else 0}}

    def groups(self, per: dict) -> dict:
        """Mean of the per-channel PSNR, SSIM and gradient ratio over the channels of each quantity
        that have valid pixels (e.g. the brightness-temperature bands), and which channels had none."""
        out = {}
        for q in sorted(set(self.quantities)):
            idx = [c for c, qq in enumerate(self.quantities) if qq == q and float(self.n[c]) > 0]
            out[q] = {"channels": [self.channels[c] for c in idx],
                      "no_valid_pixel": [self.channels[c] for c, qq in enumerate(self.quantities)
                                         if qq == q and float(self.n[c]) == 0],
                      **{m: float(np.mean([per[m][c] for c in idx])) if idx else float("nan")
                         for m in ("psnr", "ssim", "grad")}}
        return out



class EnsembleSums:
    """Ensemble scores of a method's N members (or, N = 1, a deterministic method's absolute
    error) as additive sums per channel, so batches and row bands combine exactly:

      crps          fair ensemble CRPS (:func:`metrics.crps_ensemble`) averaged over valid pixels;
                    for N = 1 the MAE (a deterministic forecast's CRPS)
      mae           mean |member 0 - truth|: the single sample's (or deterministic method's) error
      spread_skill  sqrt((N + 1) / N * mean unbiased member variance) / RMSE of the ensemble mean
      rank_histogram  counts of the truth's rank among the members (N + 1 bins), ties random

    in normalised units and (x (hi - lo) / 2 per channel) the channel's physical units.  A pixel
    counts where the mask, the truth and every member are valid."""

    chunk = 1 << 21  # member values handled at once (float64 temporaries of a band stay small)

    def __init__(self, channels: list[str], quantities: list[str], norm, n_members: int, seed: int = 0,
                 units: list[str] | None = None):
        self.channels, self.quantities, self.m = channels, quantities, int(n_members)
        self.units = units or [""] * len(channels)
        self.to_physical = (np.asarray(norm[1], np.float64) - np.asarray(norm[0], np.float64)) / 2.0
        c = len(channels)
        z = lambda *s: torch.zeros(*s, dtype=torch.float64)  # noqa: E731
        self.n, self.crps, self.ae0 = z(c), z(c), z(c)
        self.var, self.se_mean, self.ae_mean = z(c), z(c), z(c)
        self.hist = torch.zeros(c, self.m + 1, dtype=torch.int64)
        self.gen = torch.Generator().manual_seed(int(seed))

    @torch.no_grad()
    def add(self, members: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
            rows: tuple[int, int] | None = None) -> None:
        """Add normalised members (N, B, C, H, W) (NaN where invalid) against the target (B, C, H, W);
        ``mask`` (B, 1 or C, H, W) as in :meth:`ScoreSums.add`; ``rows`` = the rows this block owns."""
        if members.shape[0] != self.m:
            raise ValueError(f"{members.shape[0]} members given, {self.m} expected")
        own = slice(*rows) if rows else slice(None)
        members, target, mask = members[..., own, :], target[..., own, :], mask[..., own, :]
        per_channel = mask.shape[1] > 1
        h, w = target.shape[-2:]
        step = max(1, self.chunk // max(1, self.m * target.shape[0] * w))
        for c in range(target.shape[1]):
            for a in range(0, h, step):
                x = members[:, :, c, a:a + step]
                y = target[:, c, a:a + step]
                v = ((mask[:, c if per_channel else 0, a:a + step] > 0) & torch.isfinite(y)
                     & torch.isfinite(x).all(0))
                self._add_pixels(c, x[:, v].double(), y[v].double())

    def _add_pixels(self, c: int, x: torch.Tensor, y: torch.Tensor) -> None:
        """Valid pixels of channel c: members (N, P), truth (P)."""
        if y.numel() == 0:
            return
        self.n[c] += y.numel()
        self.crps[c] += M.crps_ensemble(x, y).sum()
        self.ae0[c] += (x[0] - y).abs().sum()
        if self.m > 1:
            mean = x.mean(0)
            self.var[c] += x.var(0, unbiased=True).sum()
            self.se_mean[c] += ((mean - y) ** 2).sum()
            self.ae_mean[c] += (mean - y).abs().sum()
            self.hist[c] += torch.bincount(M.truth_ranks(x, y, self.gen), minlength=self.m + 1)

    # -- results
    def _group(self, idx: list[int], physical: bool) -> dict:
        n = float(self.n[idx].sum())
        f = self.to_physical[idx] if physical else np.ones(len(idx))
        tot = lambda s: float((s[idx].numpy() * f).sum())  # noqa: E731
        nan = float("nan")
        out = {"pixels": int(n), "crps": tot(self.crps) / n if n else nan,
               "mae": tot(self.ae0) / n if n else nan}
        if self.m > 1:
            var = float((self.var[idx].numpy() * f ** 2).sum())
            se = float((self.se_mean[idx].numpy() * f ** 2).sum())
            out.update({"mae_mean": tot(self.ae_mean) / n if n else nan,
                        "rmse_mean": math.sqrt(se / n) if n else nan,
                        "spread": math.sqrt((self.m + 1) / self.m * var / n) if n else nan,
                        "spread_skill": M.spread_skill_ratio(var, se, n, self.m)})
            hist = self.hist[idx].sum(0)
            total = int(hist.sum())
            out["outside"] = (int(hist[0]) + int(hist[-1])) / total if total else nan
        return out

    def result(self) -> dict:
        """{"members", "deterministic", "overall": normalised units over all channels, "by_quantity":
        physical units over the channels of each quantity, "channels": per channel (normalised and
        ``*_physical``, plus the rank histogram)}."""
        out = {"members": self.m, "deterministic": self.m == 1,
               "overall": self._group(list(range(len(self.channels))), False), "by_quantity": {},
               "channels": {}}
        for q in sorted(set(self.quantities)):
            idx = [c for c, qq in enumerate(self.quantities) if qq == q]
            units = sorted({self.units[c] for c in idx})
            out["by_quantity"][q] = {"channels": [self.channels[c] for c in idx],
                                     "units": units[0] if len(units) == 1 else "", **self._group(idx, True)}
        for c, name in enumerate(self.channels):
            norm, phys = self._group([c], False), self._group([c], True)
            d = {**norm,
                 **{f"{k}_physical": v for k, v in phys.items()
                    if k not in ("pixels", "spread_skill", "outside")},
                 "units": self.units[c]}
            if self.m > 1:
                d["rank_histogram"] = self.hist[c].tolist()
            out["channels"][name] = d
        return out

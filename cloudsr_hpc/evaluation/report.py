"""The evaluation's outputs: a table laid out like the paper's (Markdown, CSV, JSON) and its plots.

The paper's published figures (``configs/published.yaml``) are printed beside ours under their own
heading: they were measured on real SEVIRI/VIIRS/FCI scenes, ours on whatever data was evaluated,
so the two are not comparable -- the table says so.

With an ensemble (``members`` > 1) the ensemble means have their own rows in the main table, and an
"Ensemble" table (CRPS, MAE of member 0, spread-skill, truth outside the ensemble), extra CSV
columns, an ``ensemble`` JSON section and ``rank_histogram.png`` are added; with one member the
outputs are exactly those without the option.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from ..config import config_path, read_yaml
from ..core.figures import pyplot, save_figure
from ..core.files import write_text_atomic
from .protocol import ENSEMBLE_MEAN, LABELS, Evaluation, method_label


def _fmt(v, digits: int) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return "inf" if math.isinf(v) else f"{v:.{digits}f}"


def markdown(ev: Evaluation, title: str, table_window: int, published: dict | None = None) -> str:
    lp = ev.lpips_label or "LPIPS"
    lines = [f"### {title}", "",
             f"Protocol: {ev.protocol} ({', '.join(f'{k}: {v}' for k, v in ev.info.items())}); x{ev.scale}, "
             f"channels {', '.join(ev.channels)}; normalised units (range 2).", "",
             f"| Method | PSNR (dB) ↑ | SSIM ↑ | Grad (≈ 1) | Percep ({lp}) ↓ | Spectrum ratio (≈ 1) | "
             f"FSS@{table_window}px ↑ |",
             "|---|---|---|---|---|---|---|"]
    for name, sc in ev.scores.items():
        o = sc["overall"]
        lines.append(f"| {method_label(name, ev.members)} | {_fmt(o['psnr'], 2)} | {_fmt(o['ssim'], 3)} | "
                     f"{_fmt(o['grad'], 3)} | {_fmt(o['lpips'], 3)} | {_fmt(o['spectrum'], 3)} | "
                     f"{_fmt(o['fss'][table_window], 3)} |")
    if ev.lpips_note:
        lines += ["", f"Percep: {ev.lpips_note}"]
    lines += ["",
              "Grad: mean Sobel gradient magnitude SR / HR. Spectrum ratio: radially averaged power of SR / "
              f"HR beyond the LR Nyquist wavenumber (k > {0.5 / ev.scale:.3f} cycles/px). FSS: fractions "
              f"skill score of cloud masks in a {table_window}x{table_window} HR-pixel neighbourhood, mean "
              "over thresholds and channels."]
    if ev.ensemble:
        lines += ensemble_markdown(ev)
    if published:
        lines += ["", f"#### Published (Gani et al., ICLR 2026 ML4RS) — {published['note']}", "",
                  "| Method | pair | PSNR (dB) ↑ | Grad (≈ 1) | Percep (LPIPS) ↓ |", "|---|---|---|---|---|"]
        for row in published["rows"]:
            lines.append(f"| {row['method']} | {row['pair']} | {_fmt(row.get('psnr'), 2)} | "
                         f"{_fmt(row.get('grad'), 2)} | {_fmt(row.get('lpips'), 2)} |")
    return "\n".join(lines) + "\n"


def ensemble_markdown(ev: Evaluation) -> list[str]:
    """The "Ensemble" table: per method, its members, CRPS over the brightness-temperature (IR)
    channels in K and over all channels in normalised units, the MAE of member 0 (a deterministic
    method's CRPS), the spread-skill ratio and how often the truth falls outside the ensemble."""
    n = ev.members
    ir = "brightness_temperature"
    lines = ["", f"#### Ensemble ({n} members per stochastic method)", "",
             "| Method | N | CRPS IR (K) ↓ | CRPS all ↓ | MAE IR (K), member 0 | MAE all, member 0 | "
             f"Spread/skill (≈ 1) | Outside ensemble (ideal {2 / (n + 1):.3f}) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, e in ev.ensemble.items():
        o, q = e["overall"], e["by_quantity"].get(ir, {})
        det = e["deterministic"]
        lines.append(f"| {LABELS.get(name, name)} | {'1 (deterministic)' if det else e['members']} | "
                     f"{_fmt(q.get('crps'), 3)} | {_fmt(o['crps'], 4)} | {_fmt(q.get('mae'), 3)} | "
                     f"{_fmt(o['mae'], 4)} | {'—' if det else _fmt(o['spread_skill'], 3)} | "
                     f"{'—' if det else _fmt(o['outside'], 3)} |")
    lines += ["",
              "CRPS: fair ensemble CRPS, mean |X_i − y| − Σ_ij |X_i − X_j| / (2N(N−1)), averaged over valid "
              "pixels; IR: the brightness-temperature channels in K, all: every channel in normalised units "
              "(range 2). For a deterministic method (one member) the CRPS is its MAE, the reference a CRPS "
              "is compared with. Spread/skill: sqrt((N+1)/N · mean unbiased member variance) / RMSE of the "
              "ensemble mean (Fortin et al. 2014; < 1 under-dispersive, > 1 over-dispersive). Outside: "
              "fraction of pixels whose truth ranks below or above every member (the rank histogram's end "
              "bins, ties broken at random; rank_histogram.png)."]
    for name, alpha in ev.calibration.items():
        lines.append(f"\n{LABELS.get(name, name)}: members inflated about their mean by "
                     + ", ".join(f"{c} ×{a:.2f}" for c, a in alpha.items())
                     + f" (spread calibration {ev.info.get('spread_calibration', '')}, fitted by "
                     "`submit calibrate`); the ensemble mean is unchanged.")
    return lines


def csv_rows(ev: Evaluation) -> str:
    """One row per method and channel (and 'all'), every measure; FSS per window."""
    windows = sorted(next(iter(ev.scores.values()))["overall"]["fss"])
    buf = io.StringIO()
    w = csv.writer(buf)
    ens_cols = ["members", "crps", "crps_physical", "mae_member0", "mae_member0_physical", "spread_skill",
                "rmse_ensemble_mean", "outside_fraction", "rank_histogram"] if ev.ensemble else []
    w.writerow(["method", "channel", "psnr_db", "ssim", "grad_ratio", "lpips", "spectrum_ratio"]
               + [f"fss_{k}px" for k in windows] + ens_cols)
    for name, sc in ev.scores.items():
        rows = [("all", sc["overall"])] + list(sc["channels"].items())
        for ch, v in rows:
            w.writerow([name, ch] + [_fmt(v[m], 5) for m in ("psnr", "ssim", "grad", "lpips", "spectrum")]
                       + [_fmt(v["fss"][k], 5) for k in windows]
                       + (_ensemble_cells(ev, name, ch) if ens_cols else []))
    return buf.getvalue()


def _ensemble_cells(ev: Evaluation, name: str, ch: str) -> list[str]:
    """The ensemble columns of a CSV row: blank for an ensemble-mean row (its scores are the others)."""
    e = ev.ensemble.get(name)
    if e is None:
        return [""] * 9
    v = e["overall"] if ch == "all" else e["channels"][ch]
    hist = v.get("rank_histogram")
    return [str(e["members"]), _fmt(v["crps"], 5), "" if ch == "all" else _fmt(v["crps_physical"], 5),
            _fmt(v["mae"], 5),
            "" if ch == "all" else _fmt(v["mae_physical"], 5), _fmt(v.get("spread_skill"), 5),
            _fmt(v.get("rmse_mean"), 5), _fmt(v.get("outside"), 5), " ".join(map(str, hist)) if hist else ""]


def _short(name: str) -> str:
    """A legend label: "Cascade", "Stage 2 only", "Cascade mean"."""
    base = name[:-len(ENSEMBLE_MEAN)] if name.endswith(ENSEMBLE_MEAN) else name
    return LABELS.get(base, base).split(":")[0].split(" (")[0] + (" mean" if base != name else "")


def plot_grad_ratio(ev: Evaluation, path: Path) -> Path:
    """Bars of the gradient-preservation ratio per method (overall and per channel), ideal 1."""
    plt = pyplot()
    names = list(ev.scores)
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(names), 3.6))
    width = 0.8 / (len(ev.channels) + 1)
    for j, ch in enumerate(["all"] + ev.channels):
        vals = [ev.scores[n]["overall"]["grad"] if ch == "all" else ev.scores[n]["channels"][ch]["grad"]
                for n in names]
        ax.bar(np.arange(len(names)) + (j - len(ev.channels) / 2) * width, vals, width,
               label=ch, color="k" if ch == "all" else None, alpha=1.0 if ch == "all" else 0.7)
    ax.axhline(1.0, color="r", lw=1, ls="--", label="ideal (= HR)")
    ax.set_xticks(range(len(names)),
                  [method_label(n, ev.members).replace(": ", ":\n").replace(" (", "\n(").replace(", ", "\n")
                   for n in names], fontsize=7)
    ax.set_ylabel("gradient ratio SR / HR")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(f"Gradient preservation ({ev.protocol})", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_spectra(ev: Evaluation, path: Path) -> Path:
    """Radially averaged power spectra per channel: HR against each method (log-log)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(ev.channels), figsize=(3.2 * len(ev.channels), 3.2), squeeze=False)
    for c, ch in enumerate(ev.channels):
        ax = axes[0, c]
        k, _, hr = next(iter(ev.spectra.values()))
        ax.loglog(k, hr[c], "k", lw=2, label="HR")
        for name, (k, p, _) in ev.spectra.items():
            ax.loglog(k, p[c], lw=1, ls="--" if name.endswith(ENSEMBLE_MEAN) else "-", label=_short(name))
        ax.axvline(0.5 / ev.scale, color="grey", ls=":", lw=1)
        ax.set_title(ch, fontsize=9)
        ax.set_xlabel("k (cycles / HR px)", fontsize=8)
        if c == 0:
            ax.set_ylabel("power (normalised units)", fontsize=8)
            ax.legend(fontsize=6)
    fig.suptitle(f"Power spectra ({ev.protocol}); dotted: LR Nyquist", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_panel(ev: Evaluation, path: Path) -> Path:
    """Qualitative panel per channel: LR / bicubic / each stage / cascade / regression / HR."""
    plt = pyplot()
    cols = (["lr"] + [n for n in ("bicubic", "stage1", "stage2", "cascade", "regression") if n in ev.example]
            + ["hr"])
    fig, axes = plt.subplots(len(ev.channels), len(cols), figsize=(1.9 * len(cols), 2.0 * len(ev.channels)),
                             squeeze=False)
    for c, ch in enumerate(ev.channels):
        hr = ev.example["hr"][c]
        vmin, vmax = np.nanpercentile(hr, [1, 99]) if np.isfinite(hr).any() else (0, 1)
        cmap = "gray_r" if ev.units and ev.units[c] == "K" else "gray"  # clouds white
        for j, name in enumerate(cols):
            ax = axes[c, j]
            ax.imshow(ev.example[name][c], cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                label = LABELS.get(name, name).split(":")[0].split(" (")[0]
                ax.set_title({"lr": "LR", "hr": "HR"}.get(name, label), fontsize=8)
            if j == 0:
                ax.set_ylabel(ch, fontsize=8)
    fig.suptitle(f"{ev.protocol}: x{ev.scale}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_rank_histogram(ev: Evaluation, path: Path) -> Path:
    """Rank histograms of the truth among each stochastic method's members, one panel per channel,
    as relative frequency x (N + 1) (flat at 1 for a consistent ensemble; U-shaped: under-dispersive,
    domed: over-dispersive, sloped: biased)."""
    plt = pyplot()
    methods = {n: e for n, e in ev.ensemble.items() if not e["deterministic"]}
    fig, axes = plt.subplots(1, len(ev.channels), figsize=(3.0 * len(ev.channels), 3.0), squeeze=False,
                             sharey=True)
    for c, ch in enumerate(ev.channels):
        ax = axes[0, c]
        for name, e in methods.items():
            h = np.asarray(e["channels"][ch]["rank_histogram"], np.float64)
            if h.sum() == 0:
                continue
            ranks = np.arange(len(h))
            ax.step(ranks, h / h.sum() * len(h), where="mid", lw=1.2, label=_short(name))
        ax.axhline(1.0, color="k", lw=1, ls="--", label="flat (consistent)")
        ax.set_title(ch, fontsize=9)
        ax.set_xlabel(f"rank of truth among {ev.members} members", fontsize=8)
        if c == 0:
            ax.set_ylabel("frequency x (N + 1)", fontsize=8)
            ax.legend(fontsize=6)
    fig.suptitle(f"Rank histograms ({ev.protocol})", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def write_report(ev: Evaluation, out_dir: str | Path, title: str, table_window: int,
                 pair: str) -> dict[str, str]:
    """metrics.md / .csv / .json and the three plots under ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pub = read_yaml(config_path("published.yaml"))
    published = ({"note": pub["note"], "rows": [r for r in pub["rows"] if r["pair"] in (pair, "unspecified")]}
                 if pub else None)
    md = markdown(ev, title, table_window, published)
    paths = {"markdown": out / "metrics.md", "csv": out / "metrics.csv", "json": out / "metrics.json"}
    write_text_atomic(paths["markdown"], md)
    write_text_atomic(paths["csv"], csv_rows(ev))
    doc = {"protocol": ev.protocol, "info": ev.info, "scale": ev.scale, "channels": ev.channels,
           "lpips": ev.lpips_label, "lpips_note": ev.lpips_note, "scores": ev.scores}
    if ev.ensemble:
        doc["ensemble"] = {"members": ev.members, "methods": ev.ensemble, "calibration": ev.calibration}
    write_text_atomic(paths["json"], json.dumps(_finite(doc), indent=1) + "\n")
    paths["grad_ratio"] = plot_grad_ratio(ev, out / "grad_ratio.png")
    paths["spectra"] = plot_spectra(ev, out / "spectra.png")
    paths["panel"] = plot_panel(ev, out / "panel.png")
    if any(not e["deterministic"] for e in ev.ensemble.values()):
        paths["rank_histogram"] = plot_rank_histogram(ev, out / "rank_histogram.png")
    return {k: str(v) for k, v in paths.items()}


def _finite(v):
    """JSON has no NaN/inf: not-a-number and infinite values become null."""
    if isinstance(v, dict):
        return {str(k): _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v

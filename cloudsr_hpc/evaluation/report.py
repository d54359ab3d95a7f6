"""The evaluation's outputs: a table laid out like the paper's (Markdown, CSV, JSON) and its plots.

The paper's published figures (``configs/published.yaml``) are printed beside ours under their own
heading: they were measured on real SEVIRI/VIIRS/FCI scenes, ours on whatever data was evaluated,
so the two are not comparable -- the table says so.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from ..config import config_path, read_yaml
from ..training.checkpoint import write_text_atomic
from .plots import pyplot, save_figure
from .protocol import LABELS, Evaluation


def _fmt(v, digits: int) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return "inf" if math.isinf(v) else f"{v:.{digits}f}"


def markdown(ev: Evaluation, title: str, table_window: int, published: dict | None = None) -> str:
    lp = ev.lpips_label or "LPIPS"
    lines = [f"### {title}", "",
             f"Protocol: {ev.protocol} ({', '.join(f'{k}: {v}' for k, v in ev.info.items())}); x{ev.scale}, "
             f"channels {', '.join(ev.channels)}; normalised units (range 2).", "",
             f"| Method | PSNR (dB) ↑ | SSIM ↑ | Grad (≈ 1) | Percep ({lp}) ↓ | Spectrum ratio (≈ 1) | FSS@{table_window}px ↑ |",
             "|---|---|---|---|---|---|---|"]
    for name, sc in ev.scores.items():
        o = sc["overall"]
        lines.append(f"| {LABELS.get(name, name)} | {_fmt(o['psnr'], 2)} | {_fmt(o['ssim'], 3)} | {_fmt(o['grad'], 3)} | "
                     f"{_fmt(o['lpips'], 3)} | {_fmt(o['spectrum'], 3)} | {_fmt(o['fss'][table_window], 3)} |")
    if ev.lpips_note:
        lines += ["", f"Percep: {ev.lpips_note}"]
    lines += ["", "Grad: mean Sobel gradient magnitude SR / HR. Spectrum ratio: radially averaged power of SR / HR "
              f"beyond the LR Nyquist wavenumber (k > {0.5 / ev.scale:.3f} cycles/px). FSS: fractions skill score of "
              f"cloud masks in a {table_window}x{table_window} HR-pixel neighbourhood, mean over thresholds and channels."]
    if published:
        lines += ["", f"#### Published (Gani et al., ICLR 2026 ML4RS) — {published['note']}", "",
                  "| Method | pair | PSNR (dB) ↑ | Grad (≈ 1) | Percep (LPIPS) ↓ |", "|---|---|---|---|---|"]
        for row in published["rows"]:
            lines.append(f"| {row['method']} | {row['pair']} | {_fmt(row.get('psnr'), 2)} | {_fmt(row.get('grad'), 2)} | "
                         f"{_fmt(row.get('lpips'), 2)} |")
    return "\n".join(lines) + "\n"


def csv_rows(ev: Evaluation) -> str:
    """One row per method and channel (and 'all'), every measure; FSS per window."""
    windows = sorted(next(iter(ev.scores.values()))["overall"]["fss"])
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["method", "channel", "psnr_db", "ssim", "grad_ratio", "lpips", "spectrum_ratio"] + [f"fss_{k}px" for k in windows])
    for name, sc in ev.scores.items():
        rows = [("all", sc["overall"])] + list(sc["channels"].items())
        for ch, v in rows:
            w.writerow([name, ch] + [_fmt(v[m], 5) for m in ("psnr", "ssim", "grad", "lpips", "spectrum")]
                       + [_fmt(v["fss"][k], 5) for k in windows])
    return buf.getvalue()


def plot_grad_ratio(ev: Evaluation, path: Path) -> Path:
    """Bars of the gradient-preservation ratio per method (overall and per channel), ideal 1."""
    plt = pyplot()
    names = list(ev.scores)
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(names), 3.6))
    width = 0.8 / (len(ev.channels) + 1)
    for j, ch in enumerate(["all"] + ev.channels):
        vals = [ev.scores[n]["overall"]["grad"] if ch == "all" else ev.scores[n]["channels"][ch]["grad"] for n in names]
        ax.bar(np.arange(len(names)) + (j - len(ev.channels) / 2) * width, vals, width,
               label=ch, color="k" if ch == "all" else None, alpha=1.0 if ch == "all" else 0.7)
    ax.axhline(1.0, color="r", lw=1, ls="--", label="ideal (= HR)")
    ax.set_xticks(range(len(names)), [LABELS.get(n, n).replace(": ", ":\n").replace(" (", "\n(") for n in names], fontsize=7)
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
            ax.loglog(k, p[c], lw=1, label=LABELS.get(name, name).split(":")[0].split(" (")[0])
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
    cols = ["lr"] + [n for n in ("bicubic", "stage1", "stage2", "cascade", "regression") if n in ev.example] + ["hr"]
    fig, axes = plt.subplots(len(ev.channels), len(cols), figsize=(1.9 * len(cols), 2.0 * len(ev.channels)), squeeze=False)
    for c, ch in enumerate(ev.channels):
        hr = ev.example["hr"][c]
        vmin, vmax = np.nanpercentile(hr, [1, 99]) if np.isfinite(hr).any() else (0, 1)
        cmap = "gray_r" if ev.units and ev.units[c] == "K" else "gray"  # clouds white
        for j, name in enumerate(cols):
            ax = axes[c, j]
            ax.imshow(ev.example[name][c], cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                ax.set_title({"lr": "LR", "hr": "HR"}.get(name, LABELS.get(name, name).split(":")[0].split(" (")[0]), fontsize=8)
            if j == 0:
                ax.set_ylabel(ch, fontsize=8)
    fig.suptitle(f"{ev.protocol}: x{ev.scale}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def write_report(ev: Evaluation, out_dir: str | Path, title: str, table_window: int, pair: str) -> dict[str, str]:
    """metrics.md / .csv / .json and the three plots under ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pub = read_yaml(config_path("published.yaml"))
    published = {"note": pub["note"], "rows": [r for r in pub["rows"] if r["pair"] in (pair, "unspecified")]} if pub else None
    md = markdown(ev, title, table_window, published)
    paths = {"markdown": out / "metrics.md", "csv": out / "metrics.csv", "json": out / "metrics.json"}
    write_text_atomic(paths["markdown"], md)
    write_text_atomic(paths["csv"], csv_rows(ev))
    doc = {"protocol": ev.protocol, "info": ev.info, "scale": ev.scale, "channels": ev.channels,
           "lpips": ev.lpips_label, "lpips_note": ev.lpips_note, "scores": ev.scores}
    write_text_atomic(paths["json"], json.dumps(_finite(doc), indent=1) + "\n")
    paths["grad_ratio"] = plot_grad_ratio(ev, out / "grad_ratio.png")
    paths["spectra"] = plot_spectra(ev, out / "spectra.png")
    paths["panel"] = plot_panel(ev, out / "panel.png")
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

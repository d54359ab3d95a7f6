"""Held-out pairs: each method (bicubic and the given cascades) against the HR truth.

Values are the shards' normalised units (range 2); PSNR and the gradient-preservation ratio are
averaged over batches of pairs.  Stochastic stages sample with a fixed seed, keyed by pair index,
so a table is reproducible.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.datasets import PairDataset
from ..models.cascade import Cascade, upsample_condition
from .metrics import gradient_ratio, psnr


def heldout_scores(val: PairDataset, methods: dict[str, Cascade], batch: int = 8) -> dict[str, dict[str, float]]:
    """{method: {"psnr": dB, "grad_ratio": SR/HR}} with "bicubic" first."""
    scores: dict[str, dict[str, list]] = {}
    for start in range(0, len(val), batch):
        idx = list(range(start, min(len(val), start + batch)))
        b = {k: torch.stack([val[i][k] for i in idx]) for k in ("lr", "lr_mask", "hr", "hr_mask")}
        y, m = upsample_condition(b["lr"], b["lr_mask"], val.scale)
        mask = m * b["hr_mask"].amin(dim=1, keepdim=True)
        preds = {"bicubic": y}
        for name, casc in methods.items():
            preds[name], _ = casc(b["lr"], b["lr_mask"], [(i * 1000, 0) for i in idx])
        for name, pred in preds.items():
            s = scores.setdefault(name, {"psnr": [], "grad_ratio": []})
            s["psnr"].append(psnr(pred, b["hr"], mask))
            s["grad_ratio"].append(gradient_ratio(pred, b["hr"], mask))
    return {name: {k: float(np.nanmean(v)) for k, v in s.items()} for name, s in scores.items()}


def markdown_table(scores: dict[str, dict[str, float]], title: str) -> str:
    lines = [f"### {title}", "", "| method | PSNR (dB) ↑ | gradient ratio (≈ 1) |", "|---|---|---|"]
    lines += [f"| {name} | {s['psnr']:.2f} | {s['grad_ratio']:.3f} |" for name, s in scores.items()]
    return "\n".join(lines) + "\n"


def write_table(scores: dict, title: str, path: str | Path) -> Path:
    from ..training.checkpoint import write_text_atomic
    path = Path(path)
    write_text_atomic(path, markdown_table(scores, title))
    return path

"""Spread calibration of an ensemble: each member's departure from the ensemble mean, scaled.

A diffusion stage with a small noise scale (κ) draws members that agree with one another more than
the truth agrees with their mean: spread/skill < 1, the truth outside all members too often.  The
members are inflated about their mean, per channel c,

    x_k' = x̄ + α_c (x_k − x̄),        α_c = 1 / (spread/skill)_c  on a calibration split,

which leaves the ensemble mean (its PSNR, its MAE) exactly as it is and multiplies the spread by
α_c, so on the calibration split the ensemble is calibrated in its second moment.  α is fitted once
per model (``submit calibrate``, on pairs the validation never sees) and stored in a JSON file bound
to the stage exports by their sha256 and to the sampler: a calibration of one model is refused for
another.  A single member has no mean to inflate about; α applies to ensembles only.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.files import write_text_atomic
from ..errors import InputError

FORMAT = "cloudsr-hpc-calibration/1"


def stage_key(cascade) -> list[dict]:
    """What an inflation is bound to: each stage's export digest and, if it samples, its sampler."""
    return [{"stage": st.meta.get("stage"), "sha256": st.meta.get("sha256", ""),
             "sampler": None if st.diffusion is None else st.diffusion.sampler} for st in cascade.stages]


@dataclass
class SpreadCalibration:
    """Inflation factors of one method's ensemble (one cascade of exported stages)."""
    method: str
    stages: list[dict]
    channels: list[str]
    inflation: list[float]
    fitted: dict = field(default_factory=dict)  # provenance: pairs, members, pixels, spread/skill before

    def factors(self) -> np.ndarray:
        return np.asarray(self.inflation, np.float64)

    def matches(self, cascade) -> bool:
        return self.stages == stage_key(cascade) and self.channels == cascade.hr_channels


def fit(method: str, cascade, spread_skill: dict[str, float], fitted: dict) -> SpreadCalibration:
    """α_c = 1 / spread_skill_c for each of the cascade's channels; a channel without spread (or
    without valid pixels) cannot be inflated and is refused by name."""
    alpha = []
    for ch in cascade.hr_channels:
        r = spread_skill.get(ch, math.nan)
        if not (math.isfinite(r) and r > 0):
            raise InputError(f"calibrate: {method} channel {ch}: spread/skill is {r} (no spread or no valid "
                             "pixels to fit an inflation on)")
        alpha.append(1.0 / r)
    return SpreadCalibration(method, stage_key(cascade), cascade.hr_channels, alpha,
                             {**fitted, "spread_skill": {c: spread_skill[c] for c in cascade.hr_channels}})


def save(path: str | Path, calibrations: list[SpreadCalibration]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps({"format": FORMAT, "methods": [asdict(c) for c in calibrations]},
                                       indent=1))
    return path


def load(path: str | Path) -> list[SpreadCalibration]:
    """The calibrations of a file written by :func:`save`; anything else is one clear error."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: calibration file not found")
    try:
        blob = json.loads(path.read_text())
        if blob.get("format") != FORMAT:
            raise ValueError(f"format is {blob.get('format')!r}, expected {FORMAT}")
        out = [SpreadCalibration(**c) for c in blob["methods"]]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{path}: not a cloudsr-hpc calibration ({e})") from None
    for c in out:
        a = np.asarray(c.inflation, np.float64)
        if a.shape != (len(c.channels),) or not np.all(np.isfinite(a) & (a > 0)):
            raise InputError(f"{path}: {c.method}: inflation must be one positive number per channel")
    return out


def find(cals: list[SpreadCalibration], cascade) -> SpreadCalibration | None:
    """The entry fitted for exactly this cascade's stages, sampler and channels, or None."""
    return next((c for c in cals if c.matches(cascade)), None)


def attach(cascade, path: str | Path, key: str = "calibration") -> SpreadCalibration:
    """Set ``cascade.spread_inflation`` from the file's entry made for exactly these stages."""
    cals = load(path)
    hit = find(cals, cascade)
    if hit is not None:
        cascade.spread_inflation = hit.factors()
        return hit
    def exports(stages: list[dict]) -> str:
        return ", ".join(f"stage {s['stage']} {s['sha256'][:12]} {s['sampler'] or ''}".strip()
                         for s in stages)

    raise InputError(f"{key}: {path} was not fitted for {cascade.describe()} "
                     f"({exports(stage_key(cascade))}); it holds "
                     + "; ".join(f"{c.method}: {exports(c.stages)}" for c in cals))


def inflate(members, alpha: np.ndarray | None, channel_axis: int):
    """Members (member axis 0) inflated about their mean by α per channel (``channel_axis`` counted
    on the members array); torch tensors or numpy arrays, NaN (no input) stays NaN."""
    if alpha is None:
        return members
    shape = [1] * members.ndim
    shape[channel_axis] = -1
    if isinstance(members, torch.Tensor):
        a = torch.as_tensor(alpha, dtype=members.dtype, device=members.device).view(shape)
        mean = members.mean(0, keepdim=True)
        return mean + a * (members - mean)
    mean = members.mean(0, keepdims=True)
    return (mean + alpha.reshape(shape).astype(members.dtype) * (members - mean)).astype(members.dtype)

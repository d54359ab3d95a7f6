"""Physical values <-> the models' [-1, 1] units, per channel over its (lo, hi) range.

The float32 operation order is part of the contract: inference, evaluation and the benchmarks
compare outputs bitwise, so these are the only definitions."""
from __future__ import annotations

import numpy as np


def normalise(values: np.ndarray, lo, hi, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Physical (C, H, W) -> ([-1, 1], NaN kept where a channel is invalid; pixel validity (H, W):
    any channel valid).  NaN carries each channel's own validity to the tiles (a reflectance channel
    at night is fill while the brightness temperatures beside it are super-resolved);
    ``out=values`` normalises in place (a full disk is 275 MB per copy)."""
    valid = np.zeros(values.shape[1:], bool)
    x = np.empty(values.shape, np.float32) if out is None else out
    # channel by channel: no scene-sized temporaries
    for c, (lo_c, hi_c) in enumerate(zip(lo, hi, strict=True)):
        valid |= np.isfinite(values[c])
        np.subtract(values[c], np.float32(lo_c), out=x[c])
        x[c] *= np.float32(2.0 / (hi_c - lo_c))
        x[c] -= np.float32(1.0)
    return x, valid


def denormalise(x: np.ndarray, lo, hi) -> np.ndarray:
    lo, hi = np.asarray(lo, np.float32)[:, None, None], np.asarray(hi, np.float32)[:, None, None]
    return ((x + 1.0) * 0.5 * (hi - lo) + lo).astype(np.float32)

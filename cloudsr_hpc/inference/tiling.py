"""Tiling a scene and blending tile predictions back, independent of tile order.

Tiles of ``tile`` LR pixels overlap by ``overlap``; tiles without a valid pixel (space) are
skipped.  Each tile's prediction enters float32 sum/weight accumulators with a window that is
1 inside, 0 over a ``halo`` next to an *interior* tile edge (where the network saw zero padding
instead of the neighbour's data) and a Hann ramp between; at scene borders there is no ramp.
With a halo at least the network's receptive-field margin, every output pixel is a weighted mean
of exact values, so tiled inference equals whole-scene inference; the Hann ramp spreads any
residual difference (e.g. from stochastic samples) smoothly instead of leaving a seam.  Invalid
pixels carry zero weight, so one NaN never spreads beyond itself.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from ..core.timing import StageClock
from ..data.geometry import window_starts


def tile_origins(n: int, tile: int, overlap: int) -> list[int]:
    """Starts of tiles of ``tile`` covering [0, n) with at least ``overlap``; one tile if n <= tile."""
    return [0] if n <= tile else window_starts(n, tile, tile - overlap)


@dataclass(frozen=True)
class Tile:
    row0: int  # LR pixels, within the scene
    col0: int
    rows: int
    cols: int

    def touches_rows(self, scale: int, a: int, b: int) -> bool:
        """Whether the tile's HR rows overlap [a, b)."""
        return self.row0 * scale < b and (self.row0 + self.rows) * scale > a


def plan_tiles(valid: np.ndarray, tile: int, overlap: int) -> list[Tile]:
    """Tiles over an LR validity mask (H, W), row-major, skipping those with no valid pixel."""
    h, w = valid.shape
    th, tw = min(tile, h), min(tile, w)
    out = []
    for r in tile_origins(h, th, overlap):
        for c in tile_origins(w, tw, overlap):
            if valid[r:r + th, c:c + tw].any():
                out.append(Tile(r, c, th, tw))
    return out


@dataclass(frozen=True)
class Blend:
    halo: int  # HR pixels of zero weight next to an interior tile edge
    ramp: int  # HR pixels of Hann ramp after the halo
    exact: bool  # every output pixel is a mean of exact (whole-scene) values


def blend_geometry(overlap_hr: int, margin_hr: int) -> Blend:
    """Halo and ramp for an overlap: a halo of the receptive margin makes tiling exact if two
    halos fit in the overlap, the rest ramps; otherwise a quarter-overlap halo and half-overlap
    ramp still hide the (then approximate) transition smoothly."""
    if 2 * margin_hr <= overlap_hr:
        return Blend(margin_hr, overlap_hr - 2 * margin_hr, True)
    return Blend(overlap_hr // 4, overlap_hr - 2 * (overlap_hr // 4), False)


def _profile(n: int, halo: int, ramp: int, start_interior: bool, end_interior: bool) -> np.ndarray:
    p = np.ones(n, np.float64)
    ramp_w = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp) + 0.5) / ramp) if ramp else np.zeros(0)
    if start_interior:
        p[:halo] = 0.0
        p[halo:halo + ramp] = ramp_w[: max(0, min(ramp, n - halo))]
    if end_interior:
        q = p[::-1]
        q[:halo] = 0.0
        q[halo:halo + ramp] = np.minimum(q[halo:halo + ramp], ramp_w[: max(0, min(ramp, n - halo))])
    return p


def blend_window(rows: int, cols: int, halo: int, ramp: int,
                 interior: tuple[bool, bool, bool, bool]) -> np.ndarray:
    """(rows, cols) weights; ``interior`` = (top, bottom, left, right) edges that face another tile."""
    top, bottom, left, right = interior
    return np.outer(_profile(rows, halo, ramp, top, bottom),
                    _profile(cols, halo, ramp, left, right)).astype(np.float32)


class Accumulator:
    """Weighted sum and weight of tile predictions over output rows [row0, row0 + rows) of a
    (C, H, W) grid.  Contributions outside those rows are clipped, so a rank or a rolling window
    holds only its own rows; :meth:`pop` hands finished rows out and moves the window down."""

    def __init__(self, channels: int, rows: int, cols: int, row0: int = 0):
        self.sum = np.zeros((channels, rows, cols), np.float32)
        self.weight = np.zeros((rows, cols), np.float32)
        self.row0 = row0

    def add(self, pred: np.ndarray, valid: np.ndarray, window: np.ndarray, row0: int, col0: int) -> None:
        """Add a (C, h, w) prediction at global (row0, col0); ``valid`` (h, w) zeroes invalid pixels'
        weight."""
        _, h, w = pred.shape
        a, b = max(row0, self.row0), min(row0 + h, self.row0 + self.weight.shape[0])
        if a >= b:
            return
        src, dst = slice(a - row0, b - row0), slice(a - self.row0, b - self.row0)
        wgt = window[src] * valid[src].astype(np.float32)
        self.sum[:, dst, col0:col0 + w] += np.where(wgt > 0, pred[:, src], 0.0) * wgt
        self.weight[dst, col0:col0 + w] += wgt

    @staticmethod
    def _normalise(s: np.ndarray, w: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            out = s / w
        return np.where(w > 0, out, np.nan).astype(np.float32)

    def result(self) -> np.ndarray:
        return self._normalise(self.sum, self.weight)

    def pop(self, n: int) -> np.ndarray:
        """The first ``n`` rows, finished (no later tile may touch them); the window moves down by n."""
        out = self._normalise(self.sum[:, :n], self.weight[:n])
        rows = self.weight.shape[0]
        for a in (self.sum, self.weight):
            for i in range(0, rows - n, n):  # n-row blocks forward: no window-sized temporary
                k = min(n, rows - n - i)
                a[..., i:i + k, :] = a[..., i + n:i + n + k, :]
            a[..., rows - n:, :] = 0.0
        self.row0 += n
        return out


def interior_edges(t: Tile, scene_rows: int, scene_cols: int) -> tuple[bool, bool, bool, bool]:
    """Which edges of a tile lie inside the scene (and so are covered by a neighbour)."""
    return (t.row0 > 0, t.row0 + t.rows < scene_rows, t.col0 > 0, t.col0 + t.cols < scene_cols)


def stitch_rows(results: Iterable[tuple[Tile, np.ndarray, np.ndarray]], scene_lr: tuple[int, int], scale: int,
                blend: Blend, channels: int, a: int, b: int, chunk: int,
                tile_rows: int, clock: StageClock | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Blend a stream of tile predictions (tiles in row order) into HR rows [a, b) and yield them
    as (first row, (C, n, W) block) of ``chunk`` rows as soon as no later tile can touch them: a
    rolling window one tile (``tile_rows`` LR rows, the plan's tallest) plus one chunk high is
    all that is held, whatever the scene size.  ``clock`` gets the seconds spent blending."""
    clock = clock or StageClock()
    h, w = scene_lr
    acc = Accumulator(channels, min(b - a, tile_rows * scale + chunk), w * scale, row0=a)
    windows: dict = {}
    done = a

    def ready(limit: int) -> Iterator[tuple[int, np.ndarray]]:
        nonlocal done
        while done < b and (done + chunk <= limit or limit >= b):
            n = min(chunk, b - done)
            with clock("blend"):
                rows = acc.pop(n)
            yield done, rows
            done += n

    for tile, pred, hr_valid in results:
        yield from ready(min(tile.row0 * scale, b))
        edges = interior_edges(tile, h, w)
        assert min((tile.row0 + tile.rows) * scale, b) <= acc.row0 + acc.weight.shape[0], "window too small"
        with clock("blend"):
            if edges not in windows:
                windows[edges] = blend_window(tile.rows * scale, tile.cols * scale, blend.halo, blend.ramp,
                                              edges)
            acc.add(pred, hr_valid, windows[edges], tile.row0 * scale, tile.col0 * scale)
    yield from ready(b)

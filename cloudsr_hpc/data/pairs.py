"""Training pairs: co-locate LR and HR scenes, reproject, cut patches, write shards.

For every LR slot with an HR scene within ``max_dt_minutes``:
  1. read both through satpy into canonical scenes (pair channels only);
  2. crop the LR window to the HR coverage and build the HR target grid = LR grid x ``scale``;
  3. reproject the HR scene (swath or geostationary) onto it with pyresample (Gaussian-weighted
     kd-tree: an area average, not a point sample, since HR pixels are smaller than the target's);
  4. slide a ``patch_lr`` window with ``stride_lr``; keep patches whose LR and HR are at least
     ``min_valid`` valid -> ``pairs`` shards (Stage 1); HR-only patches -> ``hr`` shards (Stage 2).
Every ``holdout_every``-th slot goes to the ``val`` split.

A single-sensor pair (``abi_abi``: HR = the sensor's own bands, LR = their degradation) has no LR
scene: its HR scenes are cut into ``hr`` shards only, split by space (hashed blocks of the
full-disk grid), and Stage 2 / the regression degrade them on the fly.  Re-running rewrites the
same shard names and removes shards it did not write: patches are never duplicated.
"""
from __future__ import annotations

import datetime as dt
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from .. import __version__
from ..config import dump_yaml
from ..core.seeds import splitmix_hash
from ..errors import ArchiveError, CloudSRError, InputError
from ..schema import PairsConfig
from .geometry import GeosGrid, lonlat_to_geos, window_starts
from .index import ArchiveIndex
from .readers import read_files
from .scene import channel_names, scene_grid
from .sensors import Registry, SensorPair
from .shards import ShardWriter

log = logging.getLogger(__name__)


def hr_coverage_window(lr_grid: GeosGrid, hr: xr.Dataset, margin: int = 1) -> GeosGrid | None:
    """The LR sub-window covering the valid HR data (None if they do not overlap)."""
    valid = np.zeros(hr[channel_names(hr)[0]].shape, bool)
    for c in channel_names(hr):
        valid |= np.isfinite(hr[c].values)
    hg = scene_grid(hr)
    if hg is None:
        x, y = lonlat_to_geos(hr["lon"].values[valid], hr["lat"].values[valid], lr_grid)
    else:
        xx, yy = np.meshgrid(hg.x, hg.y)
        x, y = xx[valid], yy[valid]
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any():
        return None
    cols = (x[ok] - lr_grid.extent[0]) / lr_grid.step
    rows = (lr_grid.extent[3] - y[ok]) / lr_grid.step
    r0 = max(0, int(np.floor(rows.min())) - margin)
    c0 = max(0, int(np.floor(cols.min())) - margin)
    r1 = min(lr_grid.nrows, int(np.ceil(rows.max())) + margin)
    c1 = min(lr_grid.ncols, int(np.ceil(cols.max())) + margin)
    if r1 - r0 < 1 or c1 - c0 < 1:
        return None
    return lr_grid.window(r0, c0, r1 - r0, c1 - c0)


def _lonlat_bbox(grid: GeosGrid, margin_deg: float = 0.5) -> tuple[float, float, float, float]:
    """Lon/lat box around the on-disk part of a window (crops the HR scene before it is computed)."""
    lon, lat = grid.lonlat()
    return (float(np.nanmin(lon)) - margin_deg, float(np.nanmin(lat)) - margin_deg,
            float(np.nanmax(lon)) + margin_deg, float(np.nanmax(lat)) + margin_deg)


def reproject_to_grid(hr: xr.Dataset, target: GeosGrid, radius_px: float = 2.0) -> dict[str, np.ndarray]:
    """HR scene (swath or geostationary) -> target grid, NaN where no valid source pixel falls.

    A source finer than the target (VIIRS 375 m, FCI 500 m onto 750 m) is *area averaged*: every
    valid source pixel is added to the target pixel its centre falls in (what a coarser detector
    would integrate).  A coarser source falls back to a Gaussian-weighted kd-tree (pyresample)."""
    chans = channel_names(hr)
    hg = scene_grid(hr)
    if hg is None:
        lon, lat = hr["lon"].values, hr["lat"].values
    else:
        lon, lat = hg.lonlat()
    x, y = lonlat_to_geos(lon, lat, target)
    src_res = float(np.nanmedian(np.abs(np.diff(x, axis=1))))
    if src_res < target.step:
        return {c: bucket_average(x, y, hr[c].values, target) for c in chans}
    return _kd_gauss(hr, chans, hg, target, src_res, radius_px)


def bucket_average(x: np.ndarray, y: np.ndarray, values: np.ndarray, target: GeosGrid) -> np.ndarray:
    """Mean of the valid ``values`` whose projection point (x, y) falls in each target pixel."""
    x0, _, _, y1 = target.extent
    cols = np.floor((x - x0) / target.step)
    rows = np.floor((y1 - y) / target.step)
    ok = np.isfinite(values) & (cols >= 0) & (cols < target.ncols) & (rows >= 0) & (rows < target.nrows)
    idx = (rows[ok] * target.ncols + cols[ok]).astype(np.int64)
    n = target.nrows * target.ncols
    total = np.bincount(idx, values[ok].astype(np.float64), minlength=n)
    count = np.bincount(idx, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(count > 0, total / count, np.nan)
    return out.reshape(target.shape).astype(np.float32)


def _kd_gauss(hr, chans, hg, target, src_res, radius_px):
    from pyresample import kd_tree
    from pyresample.geometry import SwathDefinition
    src = (SwathDefinition(lons=hr["lon"].values.astype(np.float64), lats=hr["lat"].values.astype(np.float64))
           if hg is None else hg.area_definition("hr_source"))
    stack = np.stack([hr[c].values for c in chans], axis=-1).astype(np.float64)
    # masked pixels must hold finite numbers: pyresample weights them by zero, and 0 * NaN = NaN
    data = np.ma.array(np.nan_to_num(stack), mask=~np.isfinite(stack))
    sigma = src_res / 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out = kd_tree.resample_gauss(src, data, target.area_definition("hr_target"),
                                     radius_of_influence=radius_px * src_res, sigmas=[sigma] * len(chans),
                                     neighbours=8, fill_value=None, reduce_data=True, nprocs=1)
    out = np.ma.filled(np.ma.asarray(out), np.nan).astype(np.float32)
    if out.ndim == 2:
        out = out[..., None]
    return {c: out[..., i] for i, c in enumerate(chans)}


@dataclass
class PairStats:
    slots: int = 0
    pairs: int = 0
    hr_patches: int = 0
    skipped: list[str] = field(default_factory=list)
    shards: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def patches_per_s(self) -> float:
        return (self.pairs + self.hr_patches) / self.seconds if self.seconds else 0.0


class PairBuilder:
    def __init__(self, registry: Registry, pair: SensorPair, archive: str | Path, out: str | Path,
                 cfg: PairsConfig):
        self.reg, self.pair, self.cfg = registry, pair, cfg
        self.index = ArchiveIndex(archive, registry)
        self.out = Path(out)
        self.lr_sensor, self.hr_sensor = registry.sensor(pair.lr), registry.sensor(pair.hr)

    def _attrs(self) -> dict:
        lo_hr, hi_hr = self.reg.norm_arrays(self.pair.hr, self.pair.hr_channels)
        lo_lr, hi_lr = self.reg.norm_arrays(self.pair.lr, self.pair.lr_channels)
        return {"pair": self.pair.name, "scale": self.pair.scale, "lr_sensor": self.pair.lr,
                "hr_sensor": self.pair.hr, "lr_channels": self.pair.lr_channels,
                "hr_channels": self.pair.hr_channels, "norm_hr": [lo_hr.tolist(), hi_hr.tolist()],
                "norm_lr": [lo_lr.tolist(), hi_lr.tolist()], "patch_lr": self.cfg.patch_lr,
                "config": dump_yaml(self.cfg), "cloudsr_hpc_version": __version__}

    def matches(self, start: dt.datetime | None = None, end: dt.datetime | None = None):
        """(LR scene files, HR scene files) pairs within the time tolerance, optionally in [start, end]."""
        lr_times = self.index.times(self.pair.lr, self.pair.lr_formats)
        if not lr_times:
            raise ArchiveError(f"{self.index.root}: no {self.pair.lr} files for pair {self.pair.name}")
        hr_times = self.index.times(self.pair.hr, self.pair.hr_formats)
        tol = dt.timedelta(minutes=self.pair.max_dt_minutes)
        out = []
        for t in lr_times:
            if (start and t < start) or (end and t > end):
                continue
            near = [h for h in hr_times if abs(h - t) <= tol]
            if near:
                h = min(near, key=lambda h: abs(h - t))
                out.append((self.index.scene(self.pair.lr, self.pair.lr_formats, t),
                            self.index.scene(self.pair.hr, self.pair.hr_formats, h)))
        return out

    def colocate(self, lr_files, hr_files) -> tuple[np.ndarray, np.ndarray, GeosGrid] | None:
        """(LR (C,h,w), HR on LR x scale (C,h*s,w*s), LR window) of one pair; None if disjoint."""
        lr = read_files(lr_files.files, self.lr_sensor, self.pair.lr_formats, self.pair.lr_channels)
        hr = read_files(hr_files.files, self.hr_sensor, self.pair.hr_formats, self.pair.hr_channels,
                        lonlat_bbox=_lonlat_bbox(scene_grid(lr)))
        grid = hr_coverage_window(scene_grid(lr), hr)
        if grid is None:
            return None
        full = scene_grid(lr)
        r0, c0 = grid.row0 - full.row0, grid.col0 - full.col0
        lr_arr = np.stack([lr[c].values[r0:r0 + grid.nrows, c0:c0 + grid.ncols]
                           for c in self.pair.lr_channels])
        hr_vals = reproject_to_grid(hr, grid.scaled(self.pair.scale), self.cfg.resampler_radius_hr_px)
        hr_arr = np.stack([hr_vals[c] for c in self.pair.hr_channels])
        return lr_arr, hr_arr, grid

    def cross_sensor_patches(self, n: int, lr_files, hr_files):
        """(split, HR patch, LR patch or None, row, col) of one co-located LR/HR scene pair; every
        ``holdout_every``-th slot is held out."""
        got = self.colocate(lr_files, hr_files)
        if got is None:
            raise InputError(f"{lr_files.time.isoformat()}: HR scene does not overlap the LR window")
        lr, hr, grid = got
        c, s, p = self.cfg, self.pair.scale, self.cfg.patch_lr
        split = "val" if n % c.holdout_every == c.holdout_every - 1 else "train"
        for r in window_starts(grid.nrows, p, c.stride_lr):
            for q in window_starts(grid.ncols, p, c.stride_lr):
                lp = lr[:, r:r + p, q:q + p]
                yield split, hr[:, r * s:(r + p) * s, q * s:(q + p) * s], lp, grid.row0 + r, grid.col0 + q

    def self_supervised_patches(self, files):
        """(split, HR patch, None, HR row, HR col) of one scene of a single-sensor pair (Stage 2 and
        the regression make their LR by degradation).  The split is by space: the full-disk grid
        is cut into ``split_block_lr * scale`` HR-pixel blocks, a hash of a block's index sends it to
        ``val`` (1 in ``holdout_every``), and patches never straddle blocks, so no pixel is in both
        splits and a block's split does not depend on the window or date range asked for."""
        hr = read_files(files.files, self.hr_sensor, self.pair.hr_formats, self.pair.hr_channels)
        grid = scene_grid(hr)
        if grid is None:
            raise InputError(f"{files.files[0]}: a self-supervised pair needs a geostationary scene")
        arr = np.stack([hr[ch].values for ch in self.pair.hr_channels])
        c, s = self.cfg, self.pair.scale
        size, stride, block = c.patch_lr * s, c.stride_lr * s, c.split_block_lr * s
        for br, rows in _blocks(grid.row0, grid.nrows, block):
            for bc, cols in _blocks(grid.col0, grid.ncols, block):
                split = "val" if split_hash(br, bc) % c.holdout_every == 0 else "train"
                for r in window_starts(rows.stop - rows.start, size, stride):
                    for q in window_starts(cols.stop - cols.start, size, stride):
                        r0, q0 = rows.start + r, cols.start + q
                        yield split, arr[:, r0:r0 + size, q0:q0 + size], None, grid.row0 + r0, grid.col0 + q0

    def scenes(self, start: dt.datetime | None, end: dt.datetime | None) -> list[tuple]:
        """What each patch source needs: (LR files, HR files) matches, or the HR scenes of a
        single-sensor pair."""
        if not self.pair.self_supervised:
            return self.matches(start, end)
        times = [t for t in self.index.times(self.pair.hr, self.pair.hr_formats)
                 if not ((start and t < start) or (end and t > end))]
        if not times:
            raise ArchiveError(f"{self.index.root}: no {self.pair.hr} ({'+'.join(self.pair.hr_formats)}) "
                               f"scenes for pair {self.pair.name}")
        return [(self.index.scene(self.pair.hr, self.pair.hr_formats, t),) for t in times]

    def run(self, start: dt.datetime | None = None, end: dt.datetime | None = None) -> PairStats:
        t0 = time.perf_counter()
        stats = PairStats()
        attrs = self._attrs()
        c = self.cfg
        writers = {(split, kind): ShardWriter(self.out / split, kind, c.shard_size, attrs, c.compression,
                                              c.compression_level)
                   for split in ("train", "val") for kind in ("pairs", "hr")}
        for n, item in enumerate(self.scenes(start, end)):
            patches = (self.self_supervised_patches(*item) if self.pair.self_supervised
                       else self.cross_sensor_patches(n, *item))
            when = item[0].time
            sources = [f.name for files in item for f in files.files]
            try:
                for split, hp, lp, row, col in patches:
                    # a pixel counts where any channel is valid: a reflectance channel at night is
                    # masked per channel in training, the brightness temperatures still teach
                    hr_ok = np.isfinite(hp).any(axis=0).mean()
                    if hr_ok >= c.stage2_min_valid:
                        writers[(split, "hr")].add(hp, when, row, col, sources)
                        stats.hr_patches += 1
                    if (lp is not None and hr_ok >= c.min_valid
                            and np.isfinite(lp).any(axis=0).mean() >= c.min_valid):
                        writers[(split, "pairs")].add(hp, when, row, col, sources, lr=lp)
                        stats.pairs += 1
            except CloudSRError as e:  # one bad scene never stops the run: record it, go on
                log.error("%s", e)
                stats.skipped.append(str(e))
                continue
            stats.slots += 1
        for w in writers.values():
            w.flush()
            w.remove_stale()
            stats.shards += [str(x) for x in w.written]
        stats.seconds = time.perf_counter() - t0
        if stats.pairs + stats.hr_patches * self.pair.self_supervised == 0:
            raise InputError(f"{self.index.root}: no valid {self.pair.name} "
                             f"{'patches' if self.pair.self_supervised else 'pairs'} found "
                             f"({len(stats.skipped)} scene(s) skipped)")
        return stats


def split_hash(*key: int) -> int:
    """A deterministic 64-bit hash of integers (:func:`cloudsr_hpc.core.seeds.splitmix_hash`),
    independent of Python's per-process ``hash`` salt and of the order patches are cut in."""
    return splitmix_hash(*key)


def _blocks(offset: int, n: int, block: int):
    """(global block index, local slice) of the ``block``-pixel blocks of the full-disk grid that a
    window of ``n`` pixels starting at global pixel ``offset`` overlaps."""
    for b in range(offset // block, -(-(offset + n) // block)):
        yield b, slice(max(0, b * block - offset), min(n, (b + 1) * block - offset))

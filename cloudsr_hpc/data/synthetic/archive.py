"""The synthetic archive: co-located LR and HR scenes of one evolving cloud field, written in the
sensors' real formats with real file names (the embedded default; no real archive is reachable).

For each LR slot the LR sensor (SEVIRI) observes the truth at the slot time through its PSF, with
a sub-pixel misregistration and noise; the HR sensor (VIIRS swath or FCI) observes the same truth
``hr_dt_minutes`` later -- the cloud has advected -- through its own PSF, with its own spectral
response (gain/offset per channel) and noise.  Those are exactly the differences Stage 1 learns.
"""
from __future__ import annotations

import datetime as dt
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..geometry import SEVIRI_FULL_DISK, GeosGrid, lonlat_to_geos
from ..sensors import Registry, Sensor, SensorPair
from .cloudfield import SPECTRAL_KIND, CloudFieldSpec, CloudScene, channel_value, grid_points, psf_sigma_px

log = logging.getLogger(__name__)

FINE = 8  # truth raster = LR grid x 8 (375 m under SEVIRI): finer than every HR sensor's pixel


@dataclass(frozen=True)
class ScenePlan:
    """Where the LR window and the HR region lie on the SEVIRI disk for a ``--size``."""
    domain: GeosGrid    # LR window (SEVIRI 3 km)
    region: GeosGrid    # truth raster of the HR region (375 m)
    viirs_scans: int    # 32 rows per I-band scan
    viirs_cols: int

    @classmethod
    def for_size(cls, size: str) -> ScenePlan:
        if size == "small":  # Europe / N. Atlantic up to the northern limb (space pixels at the top corners)
            domain = SEVIRI_FULL_DISK.window(0, 1888, 448, 320)
            region_lr = (200, 48, 224, 224)  # rows, cols, nrows, ncols inside the domain (~52 N, 10 E)
            scans, cols = 48, 1600
        elif size == "full":
            domain = SEVIRI_FULL_DISK
            region_lr = (300, 1900, 256, 512)  # ~45-52 N, 0-25 E
            scans, cols = 48, 3000
        else:
            raise ValueError(f"size must be 'small' or 'full', got {size!r}")
        r0, c0, nr, nc = region_lr
        region = domain.window(r0, c0, nr, nc).scaled(FINE)
        return cls(domain, region, scans, cols)

    @property
    def region_center_lonlat(self) -> tuple[float, float]:
        lon, lat = self.region.window(self.region.nrows // 2, self.region.ncols // 2, 1, 1).lonlat()
        return float(lon[0, 0]), float(lat[0, 0])


def _stable_seed(*parts) -> int:
    return zlib.crc32("|".join(map(str, parts)).encode())


class Observer:
    """Renders what a sensor sees: truth -> spectral channel -> PSF footprint -> noise."""

    def __init__(self, scene: CloudScene, sensor: Sensor, seed: int):
        self.scene, self.sensor, self.seed = scene, sensor, seed

    def observe(self, when: dt.datetime, x: np.ndarray, y: np.ndarray, channels: list[str],
                pixel_m: dict[str, float], gain: dict[str, float] | None = None,
                offset: dict[str, float] | None = None, fine_only: bool = False) -> dict[str, np.ndarray]:
        """Channel values at projection points (x, y).  ``fine_only``: NaN wherever the fine truth
        does not fully apply (an HR sensor must never see the coarse truth)."""
        from .cloudfield import sample
        scene = self.scene
        fine_state = scene.physical(scene.region, when) if scene.region is not None else None
        coarse_state = scene.physical(scene.domain, when)
        rng = np.random.default_rng(_stable_seed(self.seed, self.sensor.name, when.isoformat()))
        if fine_state is not None:  # the fine truth is sampled only where it is used
            w = _region_weight(scene.region, x, y)
            inside = w > 0
            xi, yi, wi = x[inside], y[inside], w[inside]
        out = {}
        for ch in channels:
            info = self.sensor.channel(ch)
            kind = SPECTRAL_KIND[ch]
            px = pixel_m[ch]
            value = sample(channel_value(kind, coarse_state), scene.domain, x, y,
                           psf_sigma_px(px, info.psf_fwhm_px, scene.domain.step)
                           if px > scene.domain.step else 0.0)
            if fine_state is not None and inside.any():
                fine = sample(channel_value(kind, fine_state), scene.region, xi, yi,
                              psf_sigma_px(px, info.psf_fwhm_px, scene.region.step))
                value[inside] = wi * np.nan_to_num(fine) + (1 - wi) * np.nan_to_num(value[inside])
            if fine_only:
                value[~inside] = np.nan
                value[inside] = np.where(wi < 1, np.nan, value[inside])
            value = value * (gain or {}).get(ch, 1.0) + (offset or {}).get(ch, 0.0)
            value = value + rng.standard_normal(value.shape).astype(np.float32) * info.noise
            if info.quantity == "reflectance":
                value = np.clip(value, 0.0, None)
            out[ch] = value.astype(np.float32)
        # off-disk / outside the rendered scene -> NaN in every channel
        lon_ok = np.isfinite(x) & np.isfinite(y)
        return {ch: np.where(lon_ok & np.isfinite(v), v, np.nan).astype(np.float32) for ch, v in out.items()}


def _region_weight(region: GeosGrid, x: np.ndarray, y: np.ndarray, ramp_px: float = 64.0) -> np.ndarray:
    """1 well inside the fine region, falling smoothly to 0 at its border (no visible frame)."""
    rows = (region.y[0] - y) / region.step
    cols = (x - region.x[0]) / region.step
    d = np.minimum.reduce([rows, cols, region.nrows - 1 - rows, region.ncols - 1 - cols])
    return np.clip(np.nan_to_num(d, nan=-1.0) / ramp_px, 0.0, 1.0)




class SyntheticArchive:
    """Writes the LR and HR files of a sensor pair for a list of slots under ``root``."""

    def __init__(self, registry: Registry, pair: SensorPair, root: Path, size: str = "small", seed: int = 0,
                 spec: CloudFieldSpec | None = None, lr_formats: list[str] | None = None):
        self.registry, self.pair, self.root = registry, pair, Path(root)
        self.lr_formats = lr_formats or pair.lr_formats
        self.plan = ScenePlan.for_size(size)
        self.seed = seed
        self.scene = CloudScene(spec or CloudFieldSpec(seed=seed), self.plan.domain, self.plan.region)
        self.lr, self.hr = registry.sensor(pair.lr), registry.sensor(pair.hr)

    def day_dir(self, sensor: str, when: dt.datetime) -> Path:
        d = self.root / sensor / f"{when:%Y/%m/%d}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    # ------------------------------------------------------------------ LR (SEVIRI)
    def write_lr(self, slot: dt.datetime) -> list[Path]:
        from .formats.seviri_native import write_seviri_native
        from .formats.seviri_nc import write_seviri_nc
        grid = self.plan.domain
        dx, dy = self.pair.simulate.misregistration_lr_px
        xx, yy = grid_points(grid)
        # the pixel nominally at (x, y) actually looked at (x + dx, y - dy): a geolocation error
        x = np.where(np.isfinite(grid.lonlat()[0]), xx + dx * grid.step, np.nan)
        y = yy - dy * grid.step
        chans = list(self.lr.channels)
        fields = Observer(self.scene, self.lr, self.seed).observe(
            slot, x, y, chans, {c: self.lr.channel(c).resolution_m for c in chans})
        writer = {"nc": write_seviri_nc, "native": write_seviri_native}
        paths = []
        for fmt in self.lr_formats:
            if fmt not in writer:
                raise ValueError(f"no synthetic writer for {self.lr.name} format '{fmt}' (have: "
                                 f"{', '.join(writer)})")
            paths += writer[fmt](self.day_dir(self.lr.name, slot), grid, fields, slot,
                                 slot + dt.timedelta(minutes=self.lr.repeat_cycle_minutes),
                                 platform=self.lr.platforms[-1])
        return paths

    # ------------------------------------------------------------------ HR
    def _hr_values(self, when: dt.datetime, x, y, chans: list[str]) -> dict[str, np.ndarray]:
        sim = self.pair.simulate
        gain = dict(zip(self.pair.hr_channels, sim.spectral_gain or [1.0] * len(chans), strict=False))
        off = dict(zip(self.pair.hr_channels, sim.spectral_offset or [0.0] * len(chans), strict=False))
        return Observer(self.scene, self.hr, self.seed + 1).observe(
            when, x, y, chans, {c: self.hr.channel(c).resolution_m for c in chans}, gain, off, fine_only=True)

    def write_hr(self, slot: dt.datetime) -> list[Path]:
        when = slot + dt.timedelta(minutes=self.pair.simulate.hr_dt_minutes)
        if self.hr.kind == "swath":
            return self._write_viirs(when)
        return self._write_fci(when)

    def _write_viirs(self, when: dt.datetime) -> list[Path]:
        from .formats.viirs import viirs_swath_lonlat, write_viirs_l1b
        lon0, lat0 = self.plan.region_center_lonlat
        lon, lat = viirs_swath_lonlat(lon0, lat0, -12.0, self.plan.viirs_scans, self.plan.viirs_cols,
                                      self.hr.channels["I01"].resolution_m)
        x, y = lonlat_to_geos(lon, lat, self.plan.domain)  # parallax ignored: the truth is a flat field
        fields = self._hr_values(when, x, y, list(self.hr.channels))
        end = when + dt.timedelta(seconds=85.4 * self.plan.viirs_scans / 48 * 4.2)
        return write_viirs_l1b(self.day_dir(self.hr.name, when), lon, lat, fields, when, end,
                               platform=self.hr.platforms[0])

    def _write_fci(self, when: dt.datetime) -> list[Path]:
        from .formats.fci import PRODUCTS, fci_full_disk, write_fci_l1c
        paths = []
        for product in self.pair.hr_formats:
            chans = [c for c in self.hr.channels if self.hr.channels[c].product == product]
            fields = {}
            for ch in chans:
                grid = _covering_window(fci_full_disk(PRODUCTS[product.upper()][ch]), self.plan.region)
                # FCI pixels -> lon/lat (FCI's own h and ellipsoid) -> the truth's SEVIRI plane
                lon, lat = grid.lonlat()
                x, y = lonlat_to_geos(lon, lat, self.plan.domain)
                fields[ch] = (grid, self._hr_values(when, x, y, [ch])[ch])
            paths += write_fci_l1c(self.day_dir(self.hr.name, when), product.upper(), fields, when,
                                   when + dt.timedelta(minutes=10), platform=self.hr.platforms[0])
        return paths

    def write(self, slots: list[dt.datetime], lr_only: bool = False) -> list[Path]:
        """Both sensors' files for every slot (``lr_only``: just the LR sensor's, what inference
        campaigns read)."""
        paths = []
        for slot in slots:
            log.info("synthesising %s %s", self.pair.name, slot.isoformat())
            paths += self.write_lr(slot)
            if not lr_only:
                paths += self.write_hr(slot)
        return paths


def _covering_window(full: GeosGrid, region: GeosGrid) -> GeosGrid:
    """The window of ``full`` that covers ``region``'s extent."""
    x0, y0, x1, y1 = region.extent
    fx0, _, _, fy1 = full.extent
    col0 = int(np.floor((x0 - fx0) / full.step))
    row0 = int(np.floor((fy1 - y1) / full.step))
    ncols = int(np.ceil((x1 - fx0) / full.step)) - col0
    nrows = int(np.ceil((fy1 - y0) / full.step)) - row0
    return full.window(row0, col0, nrows, ncols)

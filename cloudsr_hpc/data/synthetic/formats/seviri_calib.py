"""SEVIRI Level 1.5 calibration, inverted, and the facts both SEVIRI writers share.

satpy's SEVIRI readers calibrate counts as (``satpy.readers.core.seviri``)::

    radiance    = max(count * gain + offset, 0)            (float32; count 0 -> NaN)
    reflectance = pi * radiance * 100 / F * d(t)^2          (VIS006, VIS008, IR_016)
    T_l15       = C2 * vc / ln(C1 * vc^3 / radiance + 1)    (IR channels)
    BT          = A * T_l15^2 + B * T_l15 + C               (spectral radiance, BTFIT)
                | (T_l15 - beta) / alpha                    (effective radiance, CALIB)

with ``d(t)`` pyorbital's Sun-Earth distance [AU] at the file's observation start time.  This
module inverts that chain with satpy's own constants, and picks a gain/offset per channel and file
that spans the field's radiance range with SEVIRI's 10-bit counts (1..1023; 0 is "no data").
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
from pyorbital.astronomy import sun_earth_distance_correction  # the function satpy applies
from satpy.readers.core.seviri import (
    BTFIT,
    C1,
    C2,
    CALIB,
    CHANNEL_NAMES,
    PLATFORM_DICT,
    SATNUM,
    VIS_CHANNELS,
    VISIR_NUM_COLUMNS,
    VISIR_NUM_LINES,
    IRCalibrationType,
)

from ...geometry import GEOS_HEIGHT, GeosGrid

# what the writers declare in PlannedChanProcessing: spectral radiance, so satpy applies its BT fit
RADIANCE_TYPE = IRCalibrationType.spectral_radiance

VISIR_CHANNELS = tuple(CHANNEL_NAMES[i] for i in range(1, 12))  # file order: ch1..ch11
SOLAR_CHANNELS = tuple(c for c in VIS_CHANNELS if c in VISIR_CHANNELS)
COUNT_MAX = 1023  # SEVIRI L1.5 image data are 10-bit
CDS_EPOCH = dt.datetime(1958, 1, 1)  # epoch of the CCSDS day-segmented times in both formats


# ----------------------------------------------------------------------------- platform

@dataclass(frozen=True)
class Platform:
    name: str  # "Meteosat-11"
    satellite_id: int  # 324: the id the files carry and satpy's CALIB/SATNUM tables use
    msg_name: str  # "MSG4": the file-name prefix


def platform(name: str) -> Platform:
    """Look a platform up in satpy's own tables."""
    ids = {f"Meteosat-{num}": sat_id for sat_id, num in SATNUM.items()}
    msg = {v: k for k, v in PLATFORM_DICT.items() if k.startswith("MSG")}
    if name not in ids:
        raise ValueError(f"unknown SEVIRI platform {name!r}; expected one of {sorted(ids)}")
    return Platform(name, ids[name], msg[name])


# ----------------------------------------------------------------------------- calibration

@dataclass(frozen=True)
class LinearCalibration:
    """counts -> radiance, as stored in the file; both values are float32-exact (satpy casts)."""
    gain: float
    offset: float

    def to_counts(self, radiance: np.ndarray) -> np.ndarray:
        """Radiance -> uint16 counts in 1..COUNT_MAX; NaN -> 0 (satpy's "no data")."""
        finite = np.isfinite(radiance)
        counts = np.rint((np.where(finite, radiance, 0.0) - self.offset) / self.gain)
        return np.where(finite, np.clip(counts, 1, COUNT_MAX), 0).astype(np.uint16)


def fit_calibration(radiance: np.ndarray) -> LinearCalibration:
    """Gain/offset putting the finite radiance range on counts 1..COUNT_MAX.

    Real files carry one fixed gain per channel; adapting it to the field keeps the quantisation
    step (range / 1022) as small as 10 bits allow, so the written field survives a round trip.
    """
    finite = radiance[np.isfinite(radiance)]
    if finite.size == 0:
        return LinearCalibration(1.0, 0.0)
    lo, hi = float(finite.min()), float(finite.max())
    gain = float(np.float32(max(hi - lo, 1e-6 * max(abs(hi), 1.0)) / (COUNT_MAX - 1)))
    # count 1 is at (or a float32 hair below) the minimum; the offset may go negative
    return LinearCalibration(gain, float(np.float32(lo - gain)))


def is_solar(channel: str) -> bool:
    if channel not in VISIR_CHANNELS:
        raise ValueError(f"not a SEVIRI VIS/IR channel: {channel!r}")
    return channel in SOLAR_CHANNELS


def reflectance_to_radiance(refl: np.ndarray, channel: str, satellite_id: int,
                            scan_time: dt.datetime) -> np.ndarray:
    """Reflectance [%] -> radiance [mW m-2 sr-1 (cm-1)-1]; ``scan_time`` is the time satpy uses
    for the Sun-Earth distance (the file's observation start time)."""
    solar_irradiance = CALIB[satellite_id][channel]["F"]
    d = sun_earth_distance_correction(scan_time)
    return np.asarray(refl, np.float64) / (d * d) * solar_irradiance / (100.0 * np.pi)


def brightness_temperature_to_radiance(bt: np.ndarray, channel: str, satellite_id: int,
                                       radiance_type: int = IRCalibrationType.spectral_radiance
                                       ) -> np.ndarray:
    """Brightness temperature [K] -> radiance [mW m-2 sr-1 (cm-1)-1] (inverse Planck at the
    channel's central wavenumber after undoing satpy's BT fit for ``radiance_type``)."""
    bt = np.asarray(bt, np.float64)
    if radiance_type == IRCalibrationType.spectral_radiance:
        a, b, c = BTFIT[channel]
        # root of a*T^2 + b*T + (c - bt) = 0 that tends to (bt - c)/b as a -> 0, in a form
        # that does not cancel for satpy's tiny quadratic terms
        rhs = bt - c
        t_l15 = 2.0 * rhs / (b + np.sqrt(b * b + 4.0 * a * rhs))
    elif radiance_type == IRCalibrationType.effective_radiance:
        coefs = CALIB[satellite_id][channel]
        t_l15 = bt * coefs["ALPHA"] + coefs["BETA"]
    else:
        raise ValueError(f"unsupported SEVIRI radiance type {radiance_type}")
    vc = CALIB[satellite_id][channel]["VC"]
    return C1 * vc ** 3 / np.expm1(C2 * vc / t_l15)


def physical_to_radiance(values: np.ndarray, channel: str, satellite_id: int,
                         scan_time: dt.datetime,
                         radiance_type: int = IRCalibrationType.spectral_radiance) -> np.ndarray:
    """Reflectance [%] or brightness temperature [K], by channel, -> radiance (NaN stays NaN);
    negative radiances are clipped to 0 as satpy does on reading."""
    if is_solar(channel):
        rad = reflectance_to_radiance(values, channel, satellite_id, scan_time)
    else:
        rad = brightness_temperature_to_radiance(values, channel, satellite_id, radiance_type)
    return np.maximum(rad, 0.0)


def encode(values: np.ndarray, channel: str, satellite_id: int, scan_time: dt.datetime,
           radiance_type: int = IRCalibrationType.spectral_radiance
           ) -> tuple[np.ndarray, LinearCalibration]:
    """Physical values -> (10-bit counts, the gain/offset to store with them)."""
    rad = physical_to_radiance(values, channel, satellite_id, scan_time, radiance_type)
    cal = fit_calibration(rad)
    return cal.to_counts(rad), cal


# ----------------------------------------------------------------------------- time line

def naive_utc(t: dt.datetime) -> dt.datetime:
    """satpy's SEVIRI times are naive UTC."""
    return t.astimezone(dt.timezone.utc).replace(tzinfo=None) if t.tzinfo else t


def to_cds(t: dt.datetime) -> tuple[int, int]:
    """datetime -> (days since 1958-01-01, milliseconds of day), truncated to the millisecond."""
    delta = t - CDS_EPOCH
    return delta.days, delta.seconds * 1000 + delta.microseconds // 1000


@dataclass(frozen=True)
class ScanTimes:
    """The times of one repeat cycle, to millisecond precision as the files store them.

    SEVIRI scans south to north for ~12.5 of the 15 minutes of a full-disk cycle (5/6 of the cycle
    also for 5-minute rapid scans); the forward scan starts ~12 s after the nominal slot.
    """
    slot_start: dt.datetime  # nominal slot (what satpy rounds back to)
    slot_end: dt.datetime
    repeat_cycle_start: dt.datetime  # TrueRepeatCycleStart
    scan_start: dt.datetime  # ForwardScanStart
    scan_end: dt.datetime  # ForwardScanEnd (the time in a native file's name)

    CYCLE_START_DELAY = dt.timedelta(milliseconds=9_500)
    SCAN_DELAY = dt.timedelta(seconds=12)

    @classmethod
    def for_slot(cls, start: dt.datetime, end: dt.datetime | None = None) -> ScanTimes:
        start = naive_utc(start)
        end = naive_utc(end) if end is not None else start + dt.timedelta(minutes=15)
        cycle = end - start
        if cycle not in (dt.timedelta(minutes=15), dt.timedelta(minutes=5)):
            raise ValueError(f"SEVIRI repeat cycles last 15 (full disk) or 5 (rapid scan) "
                             f"minutes, not {cycle}")
        since_midnight = start - start.replace(hour=0, minute=0, second=0, microsecond=0)
        if since_midnight % cycle:
            raise ValueError(f"{start} is not the start of a {cycle} slot")
        scan_start = start + cls.SCAN_DELAY
        return cls(start, end, start + cls.CYCLE_START_DELAY, scan_start, scan_start + cycle * 5 / 6)

    @property
    def rapid_scan(self) -> bool:
        return self.slot_end - self.slot_start == dt.timedelta(minutes=5)

    def line_times(self, lines: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(days, msec of day) of SEVIRI line numbers (1 = south), scanned at a constant rate."""
        scan = (self.scan_end - self.scan_start) / dt.timedelta(milliseconds=1)
        days0, ms0 = to_cds(self.scan_start)
        ms = ms0 + np.rint((np.asarray(lines) - 1) / VISIR_NUM_LINES * scan).astype(np.int64)
        return days0 + ms // 86_400_000, ms % 86_400_000


# ----------------------------------------------------------------------------- grid

@dataclass(frozen=True)
class SeviriWindow:
    """A grid window in SEVIRI's numbering: lines 1..3712 from south, columns 1..3712 from east."""
    south: int
    north: int
    east: int
    west: int

    @classmethod
    def from_grid(cls, grid: GeosGrid) -> SeviriWindow:
        check_grid(grid)
        return cls(south=grid.full_rows - (grid.row0 + grid.nrows) + 1, north=grid.full_rows - grid.row0,
                   east=grid.full_cols - (grid.col0 + grid.ncols) + 1, west=grid.full_cols - grid.col0)

    @property
    def lines(self) -> np.ndarray:
        return np.arange(self.south, self.north + 1)


def check_grid(grid: GeosGrid) -> None:
    """The readers hard-code the 3712-pixel disk and the satellite height."""
    if (grid.full_rows, grid.full_cols) != (VISIR_NUM_LINES, VISIR_NUM_COLUMNS):
        raise ValueError(f"SEVIRI VIS/IR grids are {VISIR_NUM_LINES}x{VISIR_NUM_COLUMNS}, "
                         f"not {grid.full_rows}x{grid.full_cols}")
    if grid.h != GEOS_HEIGHT:
        raise ValueError(f"satpy's SEVIRI readers assume h={GEOS_HEIGHT} m, grid has {grid.h}")


def orbit_polynomial_windows(times: ScanTimes) -> list[tuple[dt.datetime, dt.datetime]]:
    """Two consecutive 6-hour validity windows, the first enclosing the slot (the NC reader needs
    at least two; real files carry a day's worth)."""
    day = times.slot_start.replace(hour=0, minute=0, second=0, microsecond=0)
    t0 = day + dt.timedelta(hours=6 * (times.slot_start.hour // 6))
    six = dt.timedelta(hours=6)
    return [(t0, t0 + six), (t0 + six, t0 + 2 * six)]


def orbit_polynomial_coefs(grid: GeosGrid) -> np.ndarray:
    """Chebyshev coefficients (3, 8) [km] of a satellite parked above the sub-satellite point.

    satpy evaluates ``Chebyshev(c)(t) - c[0] / 2``, so a constant position p is ``c = [2p, 0...]``.
    """
    radius_km = (grid.a + grid.h) / 1000.0
    lon = np.deg2rad(grid.sub_lon)
    coefs = np.zeros((3, 8))
    coefs[:, 0] = 2.0 * radius_km * np.array([np.cos(lon), np.sin(lon), 0.0])
    return coefs


def fields_to_counts(grid: GeosGrid, fields: dict[str, np.ndarray], plat: Platform,
                     scan_time: dt.datetime, radiance_type: int = IRCalibrationType.spectral_radiance
                     ) -> dict[str, tuple[np.ndarray, LinearCalibration]]:
    """Encode every given channel (canonical orientation kept); unknown names are an error."""
    out = {}
    for name, values in fields.items():
        is_solar(name)  # validates the name
        values = np.asarray(values)
        if values.shape != grid.shape:
            raise ValueError(f"{name}: shape {values.shape} != grid shape {grid.shape}")
        out[name] = encode(values, name, plat.satellite_id, scan_time, radiance_type)
    return out

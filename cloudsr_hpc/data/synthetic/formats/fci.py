"""MTG FCI Level-1c FDHSI / HRFI body chunks in EUMETSAT's NetCDF format, as satpy's ``fci_l1c_nc``
reads them.

Facts the writer relies on (satpy's reader, its ``fci_l1c_nc.yaml`` and ``areas.yaml``):

* Grids.  FCI's full-disk grids are square, 22272 / 11136 / 5568 pixels at 500 m / 1 km / 2 km, on
  the WGS84 ellipsoid seen from ``h = 35786400 m``.  Each channel group stores ``x`` and ``y`` as
  pixel numbers (1..N) with a ``scale_factor`` / ``add_offset`` giving the scan angle in radians:
  ``x`` (azimuth) is positive towards the west, ``y`` (elevation) towards the north.  The reader
  multiplies the angles by ``h``.  With the scale factors of the real files the pixel size is
  ``h * |scale_factor|`` (0.02 um short of 500/1000/2000 m) and the add offset is exactly
  ``|scale_factor| * (N + 1) / 2``, so the grid is symmetric about the sub-satellite point: the
  package's :class:`GeosGrid` convention, and satpy's ``mtg_fci_fdss_*`` areas to the micrometre.
* Orientation.  File column 1 is the western one (as canonical); file row 1 is the southern one
  (scan south to north), so canonical row ``r`` of an ``N``-row grid is file row ``N - r``.
* Chunks.  A repeat cycle is 40 full-width body chunks numbered from the south
  (``count_in_repeat_cycle`` 1..40).  Every chunk file holds every channel of the product, each
  with its ``start/end_position_row`` (1-based file rows); satpy stacks the chunks it is given and
  pads the missing ones from those positions.  The real chunk heights vary; here the 2 km rows are
  split as evenly as possible (32 x 139, then 8 x 140 rows) and the finer grids follow exactly
  (x2, x4), so a chunk covers the same ground at every resolution.  Only the chunks a field
  touches are written, and within them only the field's window: the rest of each variable is
  never written, reads back as the fill value, and costs no disk space.
* Calibration (``FCIL1cNCFileHandler.calibrate_*``)::

      radiance    = count * scale_factor + add_offset   (ir_38 counts 4096..8191: the warm_* pair)
      reflectance = 100 * pi * radiance * d^2 / channel_effective_solar_irradiance        [%]
      BT          = c2 * vc / (a * ln(1 + c1 * vc^3 / radiance)) - b / a                 [K]

  with ``d`` the mean of ``state/celestial/earth_sun_distance`` [km] / 149597870.7.  Counts are
  12-bit (0..4095, ir_38 13-bit with its warm range); fill is 65535.  The calibration values here
  are synthetic but of the real magnitudes (see :data:`FCI_CHANNELS`); they are fixed per
  channel, as in real files, so the round-trip error is half a count of the channel.
* Times.  The reader's start time is the nominal repeat-cycle start,
  ``midnight + (repeat_cycle_in_day - 1) * 10 min`` (full disk); the per-chunk observation times
  come from the file names.  The scan runs south to north from ``start_time`` to ``end_time``;
  a ``start_time`` inside a slot still reads back as the slot's start.
* Reading.  satpy reads each chunk through one shared netCDF4 handle, which is not safe under
  dask's threaded scheduler (pytroll/satpy#3043, "NetCDF: HDF error" with real files too):
  compute with ``dask.config.set(scheduler="synchronous")`` or under a lock.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import netCDF4
import numpy as np
from pyorbital.astronomy import gmst, sun_earth_distance_correction, sun_ra_dec

from ....core.files import atomic_write
from ...geometry import GeosGrid, geos_to_lonlat

# ----------------------------------------------------------------------------- grids

FCI_HEIGHT = 35786400.0  # perspective_point_height of the MTG geostationary projection [m]
WGS84_A = 6378137.0
WGS84_RF = 298.257223563
WGS84_B = WGS84_A * (1.0 - 1.0 / WGS84_RF)
# pixel size as a scan angle [rad]: the |scale_factor| of x and y in real FCI L1c files
ANGLE_STEP = {500: 1.39717881644274e-05, 1000: 2.79435763233999e-05, 2000: 5.58871526031607e-05}
FULL_DISK_PIXELS = {500: 22272, 1000: 11136, 2000: 5568}


def fci_full_disk(resolution_m: int, sub_lon: float = 0.0) -> GeosGrid:
    """The FCI full-disk grid at 500, 1000 or 2000 m (satpy's ``mtg_fci_fdss_500m/1km/2km``)."""
    if resolution_m not in FULL_DISK_PIXELS:
        raise ValueError(f"FCI resolution {resolution_m!r} m: expected one of {sorted(FULL_DISK_PIXELS)}")
    n = FULL_DISK_PIXELS[resolution_m]
    return GeosGrid(sub_lon=sub_lon, step=ANGLE_STEP[resolution_m] * FCI_HEIGHT, full_rows=n, full_cols=n,
                    h=FCI_HEIGHT, a=WGS84_A, b=WGS84_B)


def fci_window(grid: GeosGrid, resolution_m: int) -> GeosGrid:
    """The window of the ``resolution_m`` full disk covering the same ground as ``grid`` (a window of
    another FCI full disk); coarsening needs the window's edges on the coarser grid."""
    target = fci_full_disk(resolution_m, grid.sub_lon)
    num, den = target.full_rows, grid.full_rows  # target pixels per source pixel = num / den
    edges = np.array([grid.row0, grid.col0, grid.row0 + grid.nrows, grid.col0 + grid.ncols]) * num
    if np.any(edges % den):
        raise ValueError(f"window {grid.row0}+{grid.nrows}, {grid.col0}+{grid.ncols} does not fall on "
                         f"the {resolution_m} m grid's pixel edges")
    r0, c0, r1, c1 = (int(e) for e in edges // den)
    return target.window(r0, c0, r1 - r0, c1 - c0)


def _resolution_of(grid: GeosGrid) -> int:
    """The FCI resolution whose full disk ``grid`` is a window of; ValueError otherwise."""
    for res in FULL_DISK_PIXELS:
        disk = fci_full_disk(res, grid.sub_lon)
        if (grid.full_rows, grid.full_cols, grid.step, grid.h, grid.a, grid.b) == \
                (disk.full_rows, disk.full_cols, disk.step, disk.h, disk.a, disk.b):
            return res
    raise ValueError(f"grid {grid} is not a window of an FCI full disk (see fci_full_disk)")


# ----------------------------------------------------------------------------- chunks

N_CHUNKS = 40
_BASE_RES = 2000  # chunk boundaries are laid out on the coarsest grid so that all grids share them


def chunk_rows(resolution_m: int) -> list[tuple[int, int]]:
    """(start_position_row, end_position_row) of chunks 1..40: 1-based file rows, south to north."""
    base_rows = FULL_DISK_PIXELS[_BASE_RES]
    heights = np.full(N_CHUNKS, base_rows // N_CHUNKS)
    heights[N_CHUNKS - base_rows % N_CHUNKS:] += 1  # the remainder goes to the last chunks, as satpy pads
    factor = FULL_DISK_PIXELS[resolution_m] // base_rows
    ends = np.cumsum(heights) * factor
    return [(int(e - h * factor + 1), int(e)) for h, e in zip(heights, ends, strict=True)]


def _file_rows(grid: GeosGrid) -> tuple[int, int]:
    """First and last (1-based, south-up) file rows of a canonical window."""
    return grid.full_rows - grid.row0 - grid.nrows + 1, grid.full_rows - grid.row0


# ----------------------------------------------------------------------------- calibration

COUNT_MAX = 4095  # 12-bit counts
WARM_COUNT_MAX = 8191  # ir_38's warm (fire) range: counts 4096..8191
FILL_COUNT = 65535
AU_KM = 149597870.7  # the astronomical unit satpy divides the Earth-Sun distance by [km]
# radiance_to_bt_conversion_constant_c1 [mW m-2 sr-1 (cm-1)-4] and _c2 [K cm]: 2hc^2 and hc/k
PLANCK_C1 = float(np.float32(1.191042972e-5))
PLANCK_C2 = float(np.float32(1.4387768775))
FLOAT_FILL = netCDF4.default_fillvals["f4"]  # "not applicable" value of a calibration scalar


@dataclass(frozen=True)
class FciChannel:
    """One channel's calibration, with every number float32-exact (as stored and as satpy casts it).

    Radiances are per unit wavenumber, mW m-2 sr-1 (cm-1)-1, the files' unit."""
    name: str
    wavelength: float  # central wavelength [um]
    scale_factor: float  # counts -> radiance
    add_offset: float
    warm_scale_factor: float  # ir_38 counts 4096..8191; elsewhere equal to the normal pair
    warm_add_offset: float
    solar_irradiance: float | None = None  # channel_effective_solar_irradiance [mW m-2 (cm-1)-1]
    wavenumber: float | None = None  # radiance_to_bt_conversion_coefficient_wavenumber [cm-1]
    a: float = 1.0
    b: float = 0.0

    @property
    def solar(self) -> bool:
        return self.solar_irradiance is not None

    @property
    def has_warm_range(self) -> bool:
        return self.warm_scale_factor != self.scale_factor

    @property
    def count_max(self) -> int:
        return WARM_COUNT_MAX if self.has_warm_range else COUNT_MAX

    @property
    def quantity(self) -> str:
        """satpy's calibration name for the physical values."""
        return "reflectance" if self.solar else "brightness_temperature"

    def to_radiance(self, values: np.ndarray, sun_earth_au: float) -> np.ndarray:
        """Reflectance [%] or brightness temperature [K] -> radiance (float64; NaN stays NaN)."""
        v = np.asarray(values, np.float64)
        if self.solar:
            return v / 100.0 * self.solar_irradiance / (np.pi * sun_earth_au ** 2)
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            return (PLANCK_C1 * self.wavenumber ** 3
                    / np.expm1(PLANCK_C2 * self.wavenumber / (self.a * v + self.b)))

    def to_counts(self, radiance: np.ndarray) -> np.ndarray:
        """Radiance -> uint16 counts, saturating at the range ends; NaN -> fill."""
        finite = np.isfinite(radiance)
        rad = np.where(finite, radiance, 0.0)
        counts = np.clip(np.rint((rad - self.add_offset) / self.scale_factor), 0, COUNT_MAX)
        if self.has_warm_range:  # the nearer of the best normal and the best warm count
            warm = np.clip(np.rint((rad - self.warm_add_offset) / self.warm_scale_factor),
                           COUNT_MAX + 1, WARM_COUNT_MAX)
            err_normal = np.abs(counts * self.scale_factor + self.add_offset - rad)
            err_warm = np.abs(warm * self.warm_scale_factor + self.warm_add_offset - rad)
            counts = np.where(err_warm < err_normal, warm, counts)
        return np.where(finite, counts, FILL_COUNT).astype(np.uint16)

    @property
    def radiance_unit_conversion(self) -> float:
        """Factor from the files' radiance unit to W m-2 sr-1 um-1: 1e-3 [W/mW] * nu^2 [cm-2] * 1e-4 [um/cm]
        with nu = 1e4 / lambda."""
        return float(np.float32(1e-3 * 1e4 / self.wavelength ** 2))


def _f32(v: float) -> float:
    return float(np.float32(v))


def _solar_channel(name: str, wavelength: float, irradiance: float,
                   top_reflectance: float = 130.0) -> FciChannel:
    """12 bits spanning 0..``top_reflectance`` % at 1 AU; ``irradiance`` in mW m-2 (cm-1)-1."""
    e = _f32(irradiance)
    sf = _f32(top_reflectance / 100.0 * e / np.pi / COUNT_MAX)
    return FciChannel(name, wavelength, sf, 0.0, sf, 0.0, solar_irradiance=e)


def _planck(wavenumber: float, t: float) -> float:
    return PLANCK_C1 * wavenumber ** 3 / np.expm1(PLANCK_C2 * wavenumber / t)


def _thermal_channel(name: str, wavelength: float, top_bt: float, warm_top_bt: float | None = None,
                     a: float = 0.999, b: float = 0.3) -> FciChannel:
    """12 bits spanning radiance 0..L(``top_bt``); with ``warm_top_bt`` counts 4096..8191 continue
    up to L(``warm_top_bt``) with a coarser step, like ir_38's fire range."""
    vc, a, b = _f32(1e4 / wavelength), _f32(a), _f32(b)
    sf = _f32(_planck(vc, a * top_bt + b) / COUNT_MAX)
    wsf, woff = sf, 0.0
    if warm_top_bt is not None:
        wsf = _f32((_planck(vc, a * warm_top_bt + b) - COUNT_MAX * sf) / (WARM_COUNT_MAX - COUNT_MAX))
        woff = _f32(COUNT_MAX * sf - COUNT_MAX * wsf)  # count 4096 continues just above count 4095
    return FciChannel(name, wavelength, sf, 0.0, wsf, woff, wavenumber=vc, a=a, b=b)


# Central wavelengths from satpy's fci_l1c_nc.yaml.  Solar irradiances are the solar spectrum at
# the central wavelength converted to per-wavenumber units (E_lambda * lambda^2 / 10); the thermal
# ranges top out at 335 K (window channels) / 310 K (water vapour), ir_38's warm range at 500 K.
FCI_CHANNELS: dict[str, FciChannel] = {c.name: c for c in (
    _solar_channel("vis_04", 0.444, 37.5),
    _solar_channel("vis_05", 0.510, 49.4),
    _solar_channel("vis_06", 0.640, 65.5),
    _solar_channel("vis_08", 0.865, 72.6),
    _solar_channel("vis_09", 0.914, 72.7),
    _solar_channel("nir_13", 1.380, 69.5),
    _solar_channel("nir_16", 1.610, 62.2),
    _solar_channel("nir_22", 2.250, 40.5),
    _thermal_channel("ir_38", 3.800, 335.0, warm_top_bt=500.0),
    _thermal_channel("wv_63", 6.300, 310.0),
    _thermal_channel("wv_73", 7.350, 310.0),
    _thermal_channel("ir_87", 8.700, 335.0),
    _thermal_channel("ir_97", 9.660, 335.0),
    _thermal_channel("ir_105", 10.500, 335.0),
    _thermal_channel("ir_123", 12.300, 335.0),
    _thermal_channel("ir_133", 13.300, 335.0),
)}

# channel -> native resolution [m] in each product; HRFI groups carry an "_hr" suffix
PRODUCTS: dict[str, dict[str, int]] = {
    "FDHSI": {name: (1000 if name.startswith(("vis", "nir")) else 2000) for name in FCI_CHANNELS},
    "HRFI": {"vis_06": 500, "nir_22": 500, "ir_38": 1000, "ir_105": 1000},
}
_GROUP_SUFFIX = {"FDHSI": "", "HRFI": "_hr"}

# ----------------------------------------------------------------------------- platforms / names

# name the caller may use -> (file "platform" attribute, file-name spacecraft number)
_PLATFORMS = {f"MTG-I{i}": (f"MTI{i}", i) for i in range(1, 5)}
_PLATFORMS.update({f"MTI{i}": (f"MTI{i}", i) for i in range(1, 5)})
_PLATFORMS["Meteosat-12"] = ("MTI1", 1)

REPEAT_CYCLE = dt.timedelta(minutes=10)  # full-disk scanning service
FILE_NAME = ("W_XX-EUMETSAT-Darmstadt,IMG+SAT,MTI{sc}+FCI-1C-RRAD-{product}-FD--CHK-BODY--DIS-NC4E_C_EUMT_"
             "{processed:%Y%m%d%H%M%S}_IDPFI_OPE_{start:%Y%m%d%H%M%S}_{end:%Y%m%d%H%M%S}_N__C_"
             "{rc:04d}_{chunk:04d}.nc")
TIME_UNITS = "seconds since 2000-01-01 00:00:00.0"
_EPOCH = dt.datetime(2000, 1, 1)

# pixel_quality values of this writer (synthetic flags; the reader passes them through)
QUALITY_GOOD, QUALITY_INVALID, QUALITY_SPACE, QUALITY_FILL = 0, 1, 2, 255


# ----------------------------------------------------------------------------- writer

def write_fci_l1c(out_dir, product: str, fields: dict[str, tuple[GeosGrid, np.ndarray]],
                  start_time: dt.datetime, end_time: dt.datetime | None = None, platform: str = "MTG-I1",
                  repeat_cycle_in_day: int | None = None) -> list[Path]:
    """Write the FCI L1c ``product`` ("FDHSI" or "HRFI") body chunks that ``fields`` touch.

    ``fields`` maps satpy channel names to ``(grid, array)``: ``grid`` a window of
    ``fci_full_disk(res)`` at the channel's native resolution in the product, ``array`` of
    ``grid.shape`` in canonical orientation, reflectance [%] or brightness temperature [K], NaN
    invalid.  Channels of the product that are not given are written as fill.  The scan runs from
    ``start_time`` to ``end_time`` (default: one 10-minute repeat cycle); ``repeat_cycle_in_day``
    defaults to the 10-minute slot holding ``start_time``.  Returns the chunk files' paths, south
    to north."""
    product = product.upper()
    if product not in PRODUCTS:
        raise ValueError(f"FCI product {product!r}: expected one of {sorted(PRODUCTS)}")
    fields = _check_fields(product, fields)
    if platform not in _PLATFORMS:
        raise ValueError(f"unknown FCI platform {platform!r}; expected one of {sorted(_PLATFORMS)}")
    end_time = end_time or start_time + REPEAT_CYCLE
    if end_time <= start_time:
        raise ValueError("end_time must be after start_time")
    if repeat_cycle_in_day is None:
        midnight = start_time.replace(hour=0, minute=0, second=0, microsecond=0)
        repeat_cycle_in_day = (start_time - midnight) // REPEAT_CYCLE + 1
    if not 1 <= repeat_cycle_in_day <= dt.timedelta(days=1) // REPEAT_CYCLE:
        raise ValueError(f"repeat_cycle_in_day {repeat_cycle_in_day} out of range")

    sub_lon = next(iter(fields.values()))[0].sub_lon
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = _ChunkWriter(product, fields, sub_lon, start_time, end_time, _PLATFORMS[platform],
                          repeat_cycle_in_day)
    return [writer.write(out_dir, chunk) for chunk in _chunks_touched(fields)]


def _check_fields(product: str, fields) -> dict[str, tuple[GeosGrid, np.ndarray]]:
    if not fields:
        raise ValueError("no fields to write")
    native = PRODUCTS[product]
    checked = {}
    for name, (grid, array) in fields.items():
        if name not in native:
            raise ValueError(f"channel {name!r} is not in FCI {product}; expected one of {sorted(native)}")
        if _resolution_of(grid) != native[name]:
            raise ValueError(f"{name} is at {native[name]} m in {product}; its grid is at "
                             f"{_resolution_of(grid)} m")
        array = np.asarray(array, np.float32)
        if array.shape != grid.shape:
            raise ValueError(f"{name}: array shape {array.shape} != grid shape {grid.shape}")
        checked[name] = (grid, array)
    if len({grid.sub_lon for grid, _ in checked.values()}) > 1:
        raise ValueError("all fields must share one sub-satellite longitude")
    return checked


def _chunks_touched(fields) -> list[int]:
    touched = set()
    for grid, _ in fields.values():
        first, last = _file_rows(grid)
        rows = chunk_rows(_resolution_of(grid))
        touched.update(k for k, (s, e) in enumerate(rows, start=1) if s <= last and e >= first)
    return sorted(touched)


class _ChunkWriter:
    """Writes one body-chunk file at a time for a fixed set of fields and scan times."""

    def __init__(self, product, fields, sub_lon, start_time, end_time, platform, repeat_cycle_in_day):
        self.product = product
        self.fields = fields
        self.sub_lon = sub_lon
        self.start_time, self.end_time = start_time, end_time
        self.platform_attr, self.spacecraft = platform
        self.rc = repeat_cycle_in_day
        # the auxiliary-data vectors ("index") have one entry per 2 km line, numbered from the south
        self.base_chunks = chunk_rows(_BASE_RES)
        self.on_disk = {name: np.isfinite(geos_to_lonlat(*np.meshgrid(grid.x, grid.y), grid)[0])
                        for name, (grid, _) in fields.items()}

    def line_times(self, first: int, last: int) -> np.ndarray:
        """Acquisition times of 2 km lines ``first..last`` (the scan runs south to north)."""
        frac = (np.arange(first, last + 1) - 0.5) / FULL_DISK_PIXELS[_BASE_RES]
        t0 = np.datetime64(self.start_time, "us")
        dur = np.timedelta64(self.end_time - self.start_time, "us")
        return t0 + (frac * dur.astype(np.int64)).astype("timedelta64[us]")

    def write(self, out_dir: Path, chunk: int) -> Path:
        first, last = self.base_chunks[chunk - 1]
        times = self.line_times(first, last)
        t_start = _to_datetime(times[0] - (times[1] - times[0]) / 2)
        t_end = _to_datetime(times[-1] + (times[1] - times[0]) / 2)
        name = FILE_NAME.format(sc=self.spacecraft, product=self.product, start=t_start, end=t_end,
                                processed=t_end + dt.timedelta(seconds=30), rc=self.rc, chunk=chunk)
        path = out_dir / name
        with atomic_write(path) as tmp:
            with netCDF4.Dataset(tmp, "w", format="NETCDF4") as nc:
                nc.setncatts({"platform": self.platform_attr, "data_source": "FCI",
                              "title": f"MTG FCI Level 1c {self.product} body chunk (synthetic)",
                              "institution": "EUMETSAT",
                              "comment": "synthetic scene written by cloudsr_hpc",
                              "repeat_cycle_in_day": np.int32(self.rc),
                              "count_in_repeat_cycle": np.int32(chunk)})
                data = nc.createGroup("data")
                _write_projection(data, self.sub_lon)
                sun_earth_km = _write_aux(nc, first, last, times, self.sub_lon)
                for channel, res in PRODUCTS[self.product].items():
                    group = data.createGroup(channel + _GROUP_SUFFIX[self.product]).createGroup("measured")
                    # satpy's d: the mean of the vector as stored, in AU
                    self._write_channel(group, FCI_CHANNELS[channel], res, chunk,
                                        float(np.nanmean(sun_earth_km)) / AU_KM)
        return path

    def _write_channel(self, group, channel: FciChannel, res: int, chunk: int, sun_earth_au: float):
        start, end = chunk_rows(res)[chunk - 1]
        n_cols = FULL_DISK_PIXELS[res]
        group.createDimension("y", end - start + 1)
        group.createDimension("x", n_cols)
        _write_coordinates(group, res, start, end)
        for edge, value in (("start_position_row", start), ("end_position_row", end),
                            ("start_position_column", 1), ("end_position_column", n_cols)):
            group.createVariable(edge, "u2")[...] = value
        _write_calibration(group, channel)

        hdf_chunks = (end - start + 1, min(n_cols, 1024))
        variables = {
            "effective_radiance": _image_variable(group, "effective_radiance", "u2", FILL_COUNT, hdf_chunks, {
                "long_name": "Effective Radiance",
                "units": "mW.m-2.sr-1.(cm-1)-1",
                "scale_factor": np.float32(channel.scale_factor),
                "add_offset": np.float32(channel.add_offset),
                "warm_scale_factor": np.float32(channel.warm_scale_factor),
                "warm_add_offset": np.float32(channel.warm_add_offset),
                "valid_range": np.array([0, channel.count_max], np.uint16),
                "ancillary_variables": "pixel_quality",  # the reader requires (and rewrites) this
            }),
            "pixel_quality": _image_variable(group, "pixel_quality", "u1", QUALITY_FILL, hdf_chunks, {
                "long_name": "Pixel quality (synthetic flags)",
                "flag_values": np.array([QUALITY_GOOD, QUALITY_INVALID, QUALITY_SPACE], np.uint8),
                "flag_meanings": "good invalid_or_missing_input space",
            }),
            "index_map": _image_variable(group, "index_map", "u2", FILL_COUNT, hdf_chunks, {
                "long_name": "Index of the pixel's entry in the auxiliary-data vectors (dimension index)",
            }),
        }
        if channel.name in self.fields:
            self._write_window(variables, channel, res, start, end, sun_earth_au)

    def _write_window(self, variables, channel: FciChannel, res: int, start: int, end: int,
                      sun_earth_au: float):
        """The part of the channel's field inside this chunk, flipped to file (south-up) rows."""
        grid, values = self.fields[channel.name]
        first, last = _file_rows(grid)
        lo, hi = max(first, start), min(last, end)
        if lo > hi:
            return
        # canonical row of file row R is full_rows - R; the slice runs north to south, so flip it
        rows = slice(grid.full_rows - hi - grid.row0, grid.full_rows - lo - grid.row0 + 1)
        block = values[rows][::-1]
        on_disk = self.on_disk[channel.name][rows][::-1]
        out = (slice(lo - start, hi - start + 1), slice(grid.col0, grid.col0 + grid.ncols))

        variables["effective_radiance"][out] = channel.to_counts(channel.to_radiance(block, sun_earth_au))
        quality = np.where(np.isfinite(block), QUALITY_GOOD,
                           np.where(on_disk, QUALITY_INVALID, QUALITY_SPACE))
        variables["pixel_quality"][out] = quality.astype(np.uint8)
        factor = FULL_DISK_PIXELS[res] // FULL_DISK_PIXELS[_BASE_RES]
        line = (np.arange(lo, hi + 1) - 1) // factor + 1  # the 2 km line each file row belongs to
        variables["index_map"][out] = np.broadcast_to(line[:, None], block.shape).astype(np.uint16)


def _image_variable(group, name: str, dtype: str, fill, chunks, attrs: dict):
    var = group.createVariable(name, dtype, ("y", "x"), fill_value=fill, zlib=True, complevel=4, shuffle=True,
                               chunksizes=chunks)
    var.setncatts(attrs)
    var.set_auto_maskandscale(False)  # we write packed values
    return var


def _write_coordinates(group, res: int, start: int, end: int):
    """x (west-positive azimuth) and y (north-positive elevation) as pixel numbers with the scan-angle
    scale and offset of the real files."""
    step = ANGLE_STEP[res]
    centre = step * (FULL_DISK_PIXELS[res] + 1) / 2  # angle of pixel number 0: half a pixel beyond the edge
    for axis, numbers, sign in (("x", np.arange(1, FULL_DISK_PIXELS[res] + 1), -1.0),
                                ("y", np.arange(start, end + 1), 1.0)):
        var = group.createVariable(axis, "u2", (axis,), zlib=True, shuffle=True)
        var.setncatts({"scale_factor": sign * step, "add_offset": -sign * centre, "units": "radian",
                       "long_name": ("azimuth angle, positive west" if axis == "x"
                                     else "elevation angle, positive north")})
        var.set_auto_maskandscale(False)
        var[:] = numbers.astype(np.uint16)


def _write_calibration(group, channel: FciChannel):
    """The calibration scalars; those that do not apply to the channel hold the float fill value."""
    scalars = {
        "channel_effective_solar_irradiance": channel.solar_irradiance,
        "radiance_to_bt_conversion_coefficient_wavenumber": channel.wavenumber,
        "radiance_to_bt_conversion_coefficient_a": None if channel.solar else channel.a,
        "radiance_to_bt_conversion_coefficient_b": None if channel.solar else channel.b,
        "radiance_to_bt_conversion_constant_c1": None if channel.solar else PLANCK_C1,
        "radiance_to_bt_conversion_constant_c2": None if channel.solar else PLANCK_C2,
        "radiance_unit_conversion_coefficient": channel.radiance_unit_conversion,
    }
    for name, value in scalars.items():
        var = group.createVariable(name, "f4", fill_value=FLOAT_FILL)
        var.set_auto_maskandscale(False)
        var[...] = FLOAT_FILL if value is None else value


def _write_projection(data_group, sub_lon: float):
    var = data_group.createVariable("mtg_geos_projection", "i4")
    var.setncatts({
        "grid_mapping_name": "geostationary",
        "perspective_point_height": FCI_HEIGHT,
        "semi_major_axis": WGS84_A,
        "semi_minor_axis": WGS84_B,
        "inverse_flattening": WGS84_RF,
        "longitude_of_projection_origin": float(sub_lon),
        "latitude_of_projection_origin": 0.0,
        "sweep_angle_axis": "y",
    })


def _write_aux(nc, first: int, last: int, times: np.ndarray, sub_lon: float) -> np.ndarray:
    """The per-line vectors the index map points into; returns the Earth-Sun distances [km]."""
    n = last - first + 1
    nc.createDimension("index", n)
    sun_earth_km = sun_earth_distance_correction(times) * AU_KM
    ra, dec = sun_ra_dec(times)
    subsolar_lon = (np.degrees(ra - gmst(times)) + 180.0) % 360.0 - 180.0
    seconds = (times - np.datetime64(_EPOCH, "us")) / np.timedelta64(1, "s")
    vectors = {
        "index": ("u2", np.arange(first, last + 1), "1", "2 km line number, from the south"),
        "time": ("f8", seconds, TIME_UNITS, "acquisition time of the line"),
        "state/platform/subsatellite_latitude": ("f8", np.zeros(n), "degrees_north", None),
        "state/platform/subsatellite_longitude": ("f8", np.full(n, sub_lon), "degrees_east", None),
        "state/platform/platform_altitude": ("f8", np.full(n, FCI_HEIGHT), "m", None),
        "state/celestial/subsolar_latitude": ("f8", np.degrees(dec), "degrees_north", None),
        "state/celestial/subsolar_longitude": ("f8", subsolar_lon, "degrees_east", None),
        "state/celestial/earth_sun_distance": ("f8", sun_earth_km, "km", None),
        # within a satellite orbit radius (42164 km) of the Earth-Sun distance; close enough here
        "state/celestial/sun_satellite_distance": ("f8", sun_earth_km, "km", None),
        "data/swath_number": ("u2", np.arange(first, last + 1), "1", None),
        "data/swath_direction": ("u1", np.arange(first, last + 1) % 2, "1", "alternating scan direction"),
    }
    for path, (dtype, values, units, long_name) in vectors.items():
        *groups, name = path.split("/")
        parent = nc
        for g in groups:
            parent = parent.groups[g] if g in parent.groups else parent.createGroup(g)
        var = parent.createVariable(name, dtype, ("index",), zlib=True, shuffle=True)
        var.units = units
        if long_name:
            var.long_name = long_name
        var[:] = np.asarray(values).astype(dtype)
    return sun_earth_km


def _to_datetime(t: np.datetime64) -> dt.datetime:
    return t.astype("datetime64[us]").astype(dt.datetime)

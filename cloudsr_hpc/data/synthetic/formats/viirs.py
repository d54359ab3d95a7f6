"""VIIRS Level 1B I-band granules in NASA's NetCDF4 format, as satpy's ``viirs_l1b`` reader reads them.

A granule is two files: the observations ``V??02IMG.A<yyyyjjj.hhmm>.<collection>.<created>.nc``
(group ``observation_data``: ``I01``..``I05`` and the ``I04``/``I05`` brightness-temperature LUTs)
and the geolocation ``V??03IMG...nc`` (group ``geolocation_data``: latitude, longitude and the solar
and sensor angles).  Band data are uint16 counts, lat/lon float32 and angles int16 hundredths
of a degree, all on the ``number_of_lines x number_of_pixels`` grid, 32 lines per scan.

Calibration, as satpy 0.60's reader applies it (the file handler reads raw values, no CF masking):

* Reflective bands ``I01``..``I03``: ``reflectance [%] = 100 * (count * scale_factor + add_offset)``.
  The reader multiplies by 100 because the file units are ``1`` (no ``units`` attribute, as in
  product version 1.1+) and the requested units ``%``; it does *not* divide by cos(solar zenith) --
  that is the job of satpy's ``sunz_corrected`` modifier in composites -- so no angle is needed to
  invert it.  Counts outside ``valid_min``..``valid_max`` (the fill 65535) come back NaN.
  ``radiance_scale_factor``/``radiance_add_offset`` serve ``calibration='radiance'``.
* Thermal bands ``I04``/``I05``: the count is a scaled radiance (``scale_factor``/``add_offset`` in
  W m-2 sr-1 um-1, used for ``calibration='radiance'``) and ``brightness_temperature = LUT[count]``
  with the 65536-entry ``I0x_brightness_temperature_lut``; LUT values outside its ``valid_min`` ..
  ``valid_max`` come back NaN, so the LUT holds -999.9 at the flag/fill counts 65528..65535.  The
  LUT is monochromatic Planck at the band's central wavelength (3.74 / 11.45 um, i.e. 2674 /
  873 cm-1), and a brightness temperature is encoded as the count of the *nearest* LUT entry.

Precision of the round trip (write, then load with satpy):

* Reflectance: half a count, 0.001 % (counts of 2e-5 reflectance factor, 0 .. 131 %).
* Brightness temperature: half the local LUT step.  The radiance step is fixed, so the BT step
  shrinks as the scene warms: I05 (150 .. 380 K) <= 0.022 K, <= 0.005 K above 200 K; I04
  (150 .. 367 K) is coarse when cold, as in real data: ~3 K at 180 K, 0.5 K at 200 K, 0.1 K at
  220 K, 0.03 K at 240 K, 0.01 K at 260 K, < 0.003 K above 290 K.  Values outside a band's range
  saturate at its ends.

Geometry: :func:`viirs_swath_lonlat` lays out a swath on a sphere; row 0 is the first scan and
column 0 lies to the *right* of the direction of flight (a descending pass is stored roughly
north-up, an ascending one rotated by 180 degrees).  Sensor angles are derived from lon/lat with
the ground track on the centre column, which is how :func:`viirs_swath_lonlat` builds swaths.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import netCDF4
import numpy as np
from pyorbital import astronomy

from ....core.files import atomic_write

ROWS_PER_SCAN = 32  # I-band detectors
SCAN_PERIOD_S = 1.7864  # one rotation of the VIIRS telescope
COUNT_VALID_MAX = 65527  # counts 65528..65534 are reserved for flags in the real product
COUNT_FILL = 65535
LUT_SIZE = 65536  # one entry per 16-bit count
LUT_FILL = np.float32(-999.9)
GEO_FILL = np.float32(-999.9)
ANGLE_SCALE = 0.01  # degrees per int16 count, as in VNP03IMG
ANGLE_FILL = np.int16(-999)

EARTH_RADIUS_M = 6371008.8  # mean radius; the swath model is spherical
ORBIT_ALTITUDE_M = 829e3  # S-NPP / NOAA-20 fly at ~824-834 km
# Cross-track distance of column offset j is L*tan(j*pixel/L), the flat-earth law of a scanner at
# constant angular sampling; L is chosen so that 6400 columns of 375 m span ~3040 km, VIIRS's swath
# (edge pixels ~2x nadir, as with VIIRS's on-board aggregation).
SWATH_TAN_SCALE_M = 1.543e6
ORBIT_PERIOD_S = 6084.0  # ~101.4 min, for the nominal orbit number only
CREATION_LATENCY = dt.timedelta(hours=1)  # fixed, so that file names are reproducible
DAY_NIGHT_SZA = 85.0  # solar zenith angle separating day from night in DayNightFlag

RAD_UNITS = "Watts/meter^2/steradian/micrometer"
PLANCK_C1 = 1.191042972e8  # 2hc^2 [W um^4 m-2 sr-1]
PLANCK_C2 = 1.438776877e4  # hc/k [um K]


@dataclass(frozen=True)
class Platform:
    name: str  # satpy's platform_name
    prefix: str  # file name prefix: V + satpy's 2-letter platform_shortname
    attr: str  # the 'platform' global attribute the product carries
    collection: int
    launch: dt.datetime  # start of orbit counting (approximate)


PLATFORMS = {
    p.name: p for p in (
        Platform("Suomi-NPP", "VNP", "Suomi-NPP", 2, dt.datetime(2011, 10, 28, 9, 48)),
        Platform("NOAA-20", "VJ1", "JPSS-1", 21, dt.datetime(2017, 11, 18, 9, 47)),
        Platform("NOAA-21", "VJ2", "JPSS-2", 21, dt.datetime(2022, 11, 10, 9, 49)),
    )
}


@dataclass(frozen=True)
class ReflectiveBand:
    name: str
    solar_irradiance: float  # approximate in-band TOA irradiance at 1 AU [W m-2 um-1]
    scale_factor: float = 2e-5  # reflectance factor per count: 0 .. 1.31

    @property
    def percent_per_count(self) -> float:
        """What satpy multiplies counts by: the stored float32 scale factor times 100."""
        return float(np.float32(self.scale_factor)) * 100.0

    def encode(self, reflectance_pct: np.ndarray) -> np.ndarray:
        """Reflectance [%] -> uint16 counts; NaN -> fill, out-of-range values saturate."""
        counts = np.rint(np.clip(reflectance_pct / self.percent_per_count, 0, COUNT_VALID_MAX))
        return np.where(np.isnan(reflectance_pct), COUNT_FILL, counts).astype(np.uint16)


@dataclass(frozen=True)
class ThermalBand:
    name: str
    wavelength_um: float  # central wavelength of the monochromatic Planck LUT
    bt_min: float
    bt_max: float  # ~ saturation

    def radiance(self, bt):
        """Planck radiance [W m-2 sr-1 um-1] at the central wavelength."""
        lam = self.wavelength_um
        return PLANCK_C1 / (lam ** 5 * np.expm1(PLANCK_C2 / (lam * np.asarray(bt, np.float64))))

    def brightness_temperature(self, radiance):
        """Inverse Planck [K]."""
        lam = self.wavelength_um
        return PLANCK_C2 / (lam * np.log1p(PLANCK_C1 / (lam ** 5 * np.asarray(radiance, np.float64))))

    @property
    def add_offset(self) -> np.float32:
        return np.float32(self.radiance(self.bt_min))

    @property
    def scale_factor(self) -> np.float32:
        return np.float32((self.radiance(self.bt_max) - self.radiance(self.bt_min)) / COUNT_VALID_MAX)

    def lut(self) -> np.ndarray:
        """float32 BT per count, from the radiance the stored (float32) scale/offset give."""
        counts = np.arange(COUNT_VALID_MAX + 1, dtype=np.float64)
        rad = counts * float(self.scale_factor) + float(self.add_offset)
        lut = np.full(LUT_SIZE, LUT_FILL, np.float32)
        lut[:COUNT_VALID_MAX + 1] = self.brightness_temperature(rad)
        return lut

    def encode(self, bt: np.ndarray, lut: np.ndarray | None = None) -> np.ndarray:
        """BT [K] -> uint16 count of the nearest LUT entry; NaN -> fill, saturating at the ends."""
        valid = (self.lut() if lut is None else lut)[:COUNT_VALID_MAX + 1].astype(np.float64)
        t = np.clip(bt, valid[0], valid[-1])
        hi = np.searchsorted(valid, t).clip(1, COUNT_VALID_MAX)
        lo = hi - 1
        counts = np.where(t - valid[lo] <= valid[hi] - t, lo, hi)
        return np.where(np.isnan(bt), COUNT_FILL, counts).astype(np.uint16)


BANDS = {
    b.name: b for b in (
        ReflectiveBand("I01", solar_irradiance=1600.0),
        ReflectiveBand("I02", solar_irradiance=960.0),
        ReflectiveBand("I03", solar_irradiance=243.0),
        ThermalBand("I04", wavelength_um=3.74, bt_min=150.0, bt_max=367.0),
        ThermalBand("I05", wavelength_um=11.45, bt_min=150.0, bt_max=380.0),
    )
}


# ----------------------------------------------------------------------------- geometry

def viirs_swath_lonlat(center_lon: float, center_lat: float, heading_deg: float, n_scans: int,
                       n_cols: int = 6400, pixel_m: float = 375.0) -> tuple[np.ndarray, np.ndarray]:
    """Longitudes and latitudes [deg] of a VIIRS-like I-band swath, each ``(n_scans*32, n_cols)``.

    The ground track is the great circle through the centre with the given heading (degrees
    clockwise from north); rows run along it, ``pixel_m`` apart, the first scan first.  Each row's
    pixels lie on the great circle perpendicular to the track, column 0 on the right of the direction
    of flight, ``pixel_m`` apart at nadir and growing toward the edges (see ``SWATH_TAN_SCALE_M``).
    The Earth is a sphere and does not rotate under the satellite: deterministic and simple, not an
    orbit model.  The ground track lies midway between columns ``(n_cols-1)/2``.
    """
    rows = n_scans * ROWS_PER_SCAN
    along = (np.arange(rows) - (rows - 1) / 2) * pixel_m / EARTH_RADIUS_M  # central angles
    offset = ((n_cols - 1) / 2 - np.arange(n_cols)) * pixel_m  # > 0: right of the track
    right = SWATH_TAN_SCALE_M * np.tan(offset / SWATH_TAN_SCALE_M) / EARTH_RADIUS_M
    cos_r, sin_r = np.cos(right)[None, :, None], np.sin(right)[None, :, None]

    centre, forward, left = _track_frame(center_lon, center_lat, heading_deg)
    nadir = np.cos(along)[:, None] * centre + np.sin(along)[:, None] * forward  # (rows, 3)
    lon, lat = np.empty((rows, n_cols)), np.empty((rows, n_cols))
    for block in _row_blocks(rows):
        # every cross-track circle passes through the orbit pole 'left', so it is normal to the track
        xyz = nadir[block, None, :] * cos_r - left * sin_r
        lon[block], lat[block] = _xyz_to_lonlat(xyz)
    return lon, lat


def _row_blocks(rows: int, size: int = 8 * ROWS_PER_SCAN):
    """Row slices that bound the (rows, cols, 3) temporaries of a full granule to ~40 MB."""
    return [slice(r, min(r + size, rows)) for r in range(0, rows, size)]


def _track_frame(lon: float, lat: float, heading_deg: float):
    """Unit vectors: the centre, the direction of flight there, and the left of the track."""
    lam, phi, h = np.radians([lon, lat, heading_deg])
    centre = np.array([np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)])
    east = np.array([-np.sin(lam), np.cos(lam), 0.0])
    north = np.array([-np.sin(phi) * np.cos(lam), -np.sin(phi) * np.sin(lam), np.cos(phi)])
    forward = np.cos(h) * north + np.sin(h) * east
    return centre, forward, np.cross(centre, forward)  # up x forward = left


def _lonlat_to_xyz(lon, lat) -> np.ndarray:
    lam, phi = np.radians(lon), np.radians(lat)
    return np.stack([np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)], axis=-1)


def _xyz_to_lonlat(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    return np.degrees(np.arctan2(y, x)), np.degrees(np.arctan2(z, np.hypot(x, y)))


def sensor_angles(lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sensor zenith and azimuth [deg] (clockwise from north, pixel -> satellite) of a swath whose
    ground track runs along its centre column(s), for a satellite at ``ORBIT_ALTITUDE_M``."""
    zenith, azimuth = np.empty(lon.shape), np.empty(lon.shape)
    for block in _row_blocks(lon.shape[0]):
        zenith[block], azimuth[block] = _sensor_angles(lon[block], lat[block])
    return zenith, azimuth


def _sensor_angles(lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xyz = _lonlat_to_xyz(lon, lat)
    n_cols = lon.shape[1]
    nadir = xyz[:, (n_cols - 1) // 2] + xyz[:, n_cols // 2]  # midpoint when n_cols is even
    nadir /= np.linalg.norm(nadir, axis=-1, keepdims=True)
    nadir = np.broadcast_to(nadir[:, None, :], xyz.shape)
    # central angle pixel -> nadir, then the satellite's elevation seen from the pixel
    gamma = np.arctan2(np.linalg.norm(np.cross(xyz, nadir), axis=-1), np.sum(xyz * nadir, axis=-1))
    r_sat = (EARTH_RADIUS_M + ORBIT_ALTITUDE_M) / EARTH_RADIUS_M
    zenith = np.degrees(np.arctan2(r_sat * np.sin(gamma), r_sat * np.cos(gamma) - 1.0))
    return zenith, _bearing(lon, lat, *_xyz_to_lonlat(nadir))


def _bearing(lon1, lat1, lon2, lat2) -> np.ndarray:
    """Initial great-circle bearing [deg, 0..360) from point 1 to point 2."""
    lam1, phi1, lam2, phi2 = (np.radians(v) for v in (lon1, lat1, lon2, lat2))
    dlam = lam2 - lam1
    y = np.sin(dlam) * np.cos(phi2)
    x = np.cos(phi1) * np.sin(phi2) - np.sin(phi1) * np.cos(phi2) * np.cos(dlam)
    return np.degrees(np.arctan2(y, x)) % 360.0


def solar_angles(lon: np.ndarray, lat: np.ndarray, start_time: dt.datetime,
                 rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Solar zenith and azimuth [deg] at the mid time of each row's scan; ``rows`` are the granule
    row numbers of ``lon``'s rows (default 0, 1, ...)."""
    rows = np.arange(lon.shape[0]) if rows is None else np.asarray(rows)
    scan = rows // ROWS_PER_SCAN
    offset_ms = np.rint((scan + 0.5) * SCAN_PERIOD_S * 1000).astype("timedelta64[ms]")
    times = (np.datetime64(start_time, "ms") + offset_ms)[:, None]
    alt, az = astronomy.get_alt_az(times, lon, lat)
    return 90.0 - np.degrees(alt), np.degrees(az) % 360.0


# ----------------------------------------------------------------------------- writer

@dataclass(frozen=True)
class Granule:
    """What both files' global attributes and names are made of."""
    platform: Platform
    start: dt.datetime
    end: dt.datetime
    n_scans: int
    start_direction: str
    end_direction: str
    day_night: str
    bounds: dict[str, float]

    @property
    def created(self) -> dt.datetime:
        return self.end + CREATION_LATENCY

    @property
    def orbit_number(self) -> int:
        return int((self.start - self.platform.launch).total_seconds() // ORBIT_PERIOD_S) + 1

    def file_name(self, product: str) -> str:
        """NASA name, e.g. ``VNP02IMG.A2024153.1200.002.2024153130000.nc``."""
        return (f"{self.platform.prefix}{product}.A{self.start:%Y%j.%H%M}.{self.platform.collection:03d}."
                f"{self.created:%Y%j%H%M%S}.nc")


def write_viirs_l1b(out_dir, lon: np.ndarray, lat: np.ndarray, fields: dict[str, np.ndarray],
                    start_time: dt.datetime, end_time: dt.datetime | None = None,
                    platform: str = "Suomi-NPP") -> list[Path]:
    """Write a VIIRS L1B I-band granule (observations + geolocation) of the swath ``lon``/``lat``.

    ``fields`` maps ``I01``..``I03`` (reflectance, %) and ``I04``/``I05`` (brightness temperature,
    K) to arrays of ``lon.shape``; NaN is written as fill, a band not given is all fill.  The number
    of rows must be a multiple of 32 (whole scans).  Times are written to the second (the format's
    ``.000Z``); ``end_time`` defaults to the end of the last scan.  Returns ``[obs_path, geo_path]``.
    """
    lon, lat = np.asarray(lon, np.float64), np.asarray(lat, np.float64)
    _check_inputs(lon, lat, fields, platform)
    start = start_time.replace(microsecond=0)
    n_scans = lon.shape[0] // ROWS_PER_SCAN
    end = (end_time or start + dt.timedelta(seconds=n_scans * SCAN_PERIOD_S)).replace(microsecond=0)

    granule = Granule(PLATFORMS[platform], start, end, n_scans, *_directions(lat),
                      _day_night(lon, lat, start), _bounds(lon, lat))

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    obs = _write_atomically(out_dir / granule.file_name("02IMG"),
                            lambda nc: _write_observations(nc, granule, fields, lon.shape))
    geo = _write_atomically(out_dir / granule.file_name("03IMG"),
                            lambda nc: _write_geolocation(nc, granule, lon, lat))
    return [obs, geo]


def _check_inputs(lon, lat, fields, platform):
    if platform not in PLATFORMS:
        raise ValueError(f"unknown platform {platform!r}; expected one of {sorted(PLATFORMS)}")
    if lon.ndim != 2 or lon.shape != lat.shape:
        raise ValueError(f"lon {lon.shape} and lat {lat.shape} must be equal 2-D shapes")
    if lon.shape[0] == 0 or lon.shape[0] % ROWS_PER_SCAN:
        raise ValueError(f"{lon.shape[0]} rows is not a whole number of {ROWS_PER_SCAN}-line scans")
    for name, values in fields.items():
        if name not in BANDS:
            raise ValueError(f"unknown I-band {name!r}; expected one of {sorted(BANDS)}")
        if np.shape(values) != lon.shape:
            raise ValueError(f"{name} has shape {np.shape(values)}, the swath {lon.shape}")


def _directions(lat: np.ndarray) -> tuple[str, str]:
    """Ascending/Descending at the first and last scan, from the centre column's latitude."""
    track = lat[:, lat.shape[1] // 2]
    step = ROWS_PER_SCAN if len(track) > ROWS_PER_SCAN else 1
    def direction(a, b):
        return "Ascending" if b >= a else "Descending"
    return direction(track[0], track[step]), direction(track[-1 - step], track[-1])


def _day_night(lon, lat, start: dt.datetime, every: int = 8) -> str:
    """DayNightFlag from the solar zenith angle of every 8th row and column (it is informative only)."""
    sza = solar_angles(lon[::every, ::every], lat[::every, ::every], start,
                       rows=np.arange(0, lon.shape[0], every))[0]
    day = sza[np.isfinite(sza)] < DAY_NIGHT_SZA
    return "Day" if day.all() else "Night" if not day.any() else "Both"


def _bounds(lon, lat) -> dict[str, float]:
    return {"geospatial_lat_min": np.nanmin(lat), "geospatial_lat_max": np.nanmax(lat),
            "geospatial_lon_min": np.nanmin(lon), "geospatial_lon_max": np.nanmax(lon)}


def _write_atomically(path: Path, fill) -> Path:
    with atomic_write(path) as tmp, netCDF4.Dataset(tmp, "w", format="NETCDF4") as nc:
        fill(nc)
    return path


def _write_common(nc, granule: Granule, product: str, shape: tuple[int, int]):
    iso = "%Y-%m-%dT%H:%M:%S.000Z"  # the reader parses exactly this
    name = granule.file_name(product)
    nc.setncatts({
        "title": f"VIIRS I-band {'Geolocation' if product.startswith('03') else 'Observation'} "
                 "Data (synthetic)",
        "product_name": name,
        "ShortName": name.split(".")[0],
        "processing_level": "L1B" if product.startswith("02") else "L1",
        "Conventions": "CF-1.6",
        "creator_name": "cloudsr_hpc synthetic writer",
        "comment": "synthetic granule; calibration and geometry are nominal, not the instrument's",
        "platform": granule.platform.attr,
        "instrument": "VIIRS",
        "time_coverage_start": granule.start.strftime(iso),
        "time_coverage_end": granule.end.strftime(iso),
        "date_created": granule.created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "orbit_number": np.int32(granule.orbit_number),
        "startDirection": granule.start_direction,
        "endDirection": granule.end_direction,
        "DayNightFlag": granule.day_night,
        "number_of_filled_scans": np.int32(granule.n_scans),
        **{k: np.float32(v) for k, v in granule.bounds.items()},
    })
    # the reader derives rows_per_scan from number_of_lines / number_of_scans
    nc.createDimension("number_of_scans", granule.n_scans)
    nc.createDimension("number_of_lines", shape[0])
    nc.createDimension("number_of_pixels", shape[1])


def _create(group, name, dtype, shape, fill, attrs, dims=("number_of_lines", "number_of_pixels")):
    """A variable whose data we write packed (no netCDF4 scaling/masking).

    Images are compressed in chunks of 8 scans x 1024 pixels: powers of two that tile satpy's
    4096-element dask chunks, so xarray does not warn about split chunks.  The (1-D) LUT is stored
    contiguous for the same reason."""
    if len(dims) == 2:
        layout = dict(zlib=True, complevel=1, shuffle=True,
                      chunksizes=(min(shape[0], 8 * ROWS_PER_SCAN), min(shape[1], 1024)))
    else:
        layout = dict(contiguous=True)
    var = group.createVariable(name, dtype, dims, fill_value=fill, **layout)
    var.setncatts(attrs)
    var.set_auto_maskandscale(False)
    return var


def _write_observations(nc, granule: Granule, fields: dict[str, np.ndarray], shape):
    _write_common(nc, granule, "02IMG", shape)
    nc.createDimension("number_of_LUT_values", LUT_SIZE)
    obs = nc.createGroup("observation_data")
    d_sun = float(astronomy.sun_earth_distance_correction(granule.start))  # AU
    for name, band in BANDS.items():
        # a band not given is created but never written: its chunks read back as fill at no cost
        if isinstance(band, ReflectiveBand):
            var = _create(obs, name, "u2", shape, np.uint16(COUNT_FILL), _reflective_attrs(band, d_sun))
            encode = band.encode
        else:
            lut = band.lut()
            var = _create(obs, name, "u2", shape, np.uint16(COUNT_FILL), _thermal_attrs(band))
            encode = partial(band.encode, lut=lut)  # the LUT once, not per block
            lut_var = _create(obs, f"{name}_brightness_temperature_lut", "f4", (LUT_SIZE,), LUT_FILL, {
                "long_name": f"{name} brightness temperature lookup table, indexed by the scaled "
                             "radiance count",
                "units": "Kelvin",
                "valid_min": lut[0],
                "valid_max": lut[COUNT_VALID_MAX],
            }, dims=("number_of_LUT_values",))
            lut_var[:] = lut
        if name in fields:
            for block in _row_blocks(shape[0]):  # bounds the float64 temporaries of a full granule
                var[block] = encode(np.asarray(fields[name][block], np.float64))


def _reflective_attrs(band: ReflectiveBand, d_sun: float) -> dict:
    # L = rho * E0 / (pi d^2): the stored reflectance factor already contains cos(SZA)
    rad_per_count = band.scale_factor * band.solar_irradiance / (np.pi * d_sun ** 2)
    return {
        "long_name": f"I-band {band.name} earth view reflectance",
        "scale_factor": np.float32(band.scale_factor),
        "add_offset": np.float32(0.0),
        "radiance_scale_factor": np.float32(rad_per_count),
        "radiance_add_offset": np.float32(0.0),
        "radiance_units": RAD_UNITS,
        "valid_min": np.uint16(0),
        "valid_max": np.uint16(COUNT_VALID_MAX),
    }


def _thermal_attrs(band: ThermalBand) -> dict:
    return {
        "long_name": f"I-band {band.name} earth view radiance",
        "units": RAD_UNITS,
        "scale_factor": band.scale_factor,
        "add_offset": band.add_offset,
        "valid_min": np.uint16(0),
        "valid_max": np.uint16(COUNT_VALID_MAX),
    }


def _write_geolocation(nc, granule: Granule, lon, lat):
    _write_common(nc, granule, "03IMG", lon.shape)
    geo = nc.createGroup("geolocation_data")
    for name, values, lo, hi, units in (("latitude", lat, -90, 90, "degrees_north"),
                                        ("longitude", lon, -180, 180, "degrees_east")):
        var = _create(geo, name, "f4", lon.shape, GEO_FILL, {
            "long_name": f"{name.capitalize()} of pixel locations",
            "units": units, "valid_min": np.float32(lo), "valid_max": np.float32(hi)})
        var[:] = np.where(np.isfinite(values), values, GEO_FILL).astype(np.float32)

    angle_vars = {name: _create(geo, name, "i2", lon.shape, ANGLE_FILL, _angle_attrs(name))
                  for name in ("solar_zenith", "solar_azimuth", "sensor_zenith", "sensor_azimuth")}
    for block in _row_blocks(lon.shape[0]):
        rows = np.arange(block.start, block.stop)
        angles = (*solar_angles(lon[block], lat[block], granule.start, rows),
                  *_sensor_angles(lon[block], lat[block]))
        for (name, var), values in zip(angle_vars.items(), angles, strict=True):
            var[block] = _angle_counts(values, azimuth=name.endswith("azimuth"))


def _angle_attrs(name: str) -> dict:
    lo = -180 if name.endswith("azimuth") else 0
    return {
        "long_name": name.replace("_", " ") + " angle at pixel locations",
        "units": "degrees",
        "scale_factor": np.float32(ANGLE_SCALE),
        "add_offset": np.float32(0.0),
        "valid_min": np.int16(lo / ANGLE_SCALE),
        "valid_max": np.int16(180 / ANGLE_SCALE),
    }


def _angle_counts(degrees: np.ndarray, azimuth: bool) -> np.ndarray:
    if azimuth:  # VNP03 stores azimuths in -180..180
        degrees = (degrees + 180.0) % 360.0 - 180.0
    counts = np.rint(degrees / ANGLE_SCALE)
    return np.where(np.isfinite(counts), counts, ANGLE_FILL).astype(np.int16)

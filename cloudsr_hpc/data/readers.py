"""Real satellite files -> canonical scene, through satpy's own readers.

satpy does the format work (packed lines, chunked segments, calibration to reflectance/BT);
this module only picks the reader from the sensor registry, puts the result in the canonical
orientation, and turns every failure into one line naming the file and what is wrong.  Files
that do not make one scene (channels of different sectors or satellites, or from different scans)
are refused here, whatever satpy makes of them.  Reflectance is set to NaN where the sun is below
the sensor's ``night_zenith_deg``: there is no signal to learn or super-resolve there.
"""
from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from pathlib import Path

import dask
import numpy as np
import xarray as xr
from pyorbital.astronomy import sun_zenith_angle

from ..errors import InputError, one_line
from .geometry import GeosGrid, geos_to_lonlat
from .scene import NIGHT_MASKED, channel_names, check_not_empty, make_scene
from .sensors import Sensor

log = logging.getLogger(__name__)

# Scan half-angle of SEVIRI's full disk [rad], the widest of the imagers here (FCI's is the same,
# ABI's 0.1519): the symmetric envelope every geostationary window is placed in.  Only its being
# even in pixels matters (pixel edges at integer multiples of the step, as all fixed grids have).
DISK_HALF_ANGLE = 1856 * 3000.403165817 / 35785831.0
ROW_BLOCK = 512  # rows whose lon/lat night masking computes at a time


def _where(files: list[str]) -> str:
    """How errors name the input: the file(s) themselves when a few, else the directory and a count."""
    if len(files) <= 3:
        return ", ".join(files)
    return f"{Path(files[0]).parent}/{{{len(files)} files}}"


def _grid_from_area(area, sensor: Sensor, where: str = "") -> GeosGrid:
    """GeosGrid of a north-up satpy AreaDefinition (loaded with ``upper_right_corner="NE"``).
    Satellite height, longitude, ellipsoid and sweep axis come from the area's CRS (pyproj), not
    from the sensor: GOES-East and GOES-West are one sensor, and ABI scans with sweep x."""
    where = where or sensor.name
    cf = area.crs.to_cf()
    if cf.get("grid_mapping_name") != "geostationary":
        raise InputError(f"{where}: {sensor.name} data on a {cf.get('grid_mapping_name', area.crs.name)} "
                         f"projection, not a geostationary fixed grid")
    west, south, east, north = area.area_extent
    if west > east or south > north:  # a reader that ignored upper_right_corner
        raise InputError(f"{where}: {sensor.name} reader gave a {area.area_extent} area that is not "
                         "north-up, east-right")
    step = (east - west) / area.width
    h = float(cf["perspective_point_height"])
    # A symmetric full-disk envelope (>= the Earth disk) that this window is aligned to; only the
    # window's coordinates matter downstream, and those are exact whatever the envelope.
    half = max(h * DISK_HALF_ANGLE, abs(west), abs(east), abs(south), abs(north)) / step
    full = 2 * int(np.ceil(half - 1e-3))  # tolerate float32 extents (the native reader)
    col0, row0 = west / step + full / 2, full / 2 - north / step
    if abs(col0 - round(col0)) > 1e-3 or abs(row0 - round(row0)) > 1e-3:
        raise InputError(f"{where}: {sensor.name} area extent {area.area_extent} is not aligned to a "
                         f"symmetric full-disk grid of step {step:.3f} m")
    ellipsoid = area.crs.ellipsoid
    grid = GeosGrid(sub_lon=float(cf.get("longitude_of_projection_origin", 0.0)), step=float(step),
                    full_rows=full, full_cols=full, row0=int(round(row0)), col0=int(round(col0)),
                    nrows=area.height, ncols=area.width, h=h, a=float(ellipsoid.semi_major_metre),
                    b=float(ellipsoid.semi_minor_metre), sweep=str(cf.get("sweep_angle_axis", "y")))
    return grid


def _check_files(files: list[str]) -> None:
    for f in files:
        p = Path(f)
        if not p.exists():
            raise InputError(f"{f}: no such file")
        if p.stat().st_size == 0:
            raise InputError(f"{f}: empty file")


def _open(files: list[str], sensor: Sensor, fmts: list[str], where: str):
    """A satpy Scene of ``files``; any failure (satpy raises many types for broken files) is one line."""
    readers = sorted({sensor.file_format(f).reader for f in fmts})
    with _satpy_causes() as causes:
        try:
            from satpy import Scene
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return Scene(filenames={r: files for r in readers} if len(readers) > 1 else files,
                             reader=readers[0] if len(readers) == 1 else None)
        except Exception as e:
            raise _reader_failed(where, sensor, e, causes) from None


def _why(causes: list[BaseException]) -> str:
    """What satpy logged first (the file handler's own error), for the one-line message."""
    return f"; satpy: {causes[0].__class__.__name__}: {one_line(causes[0])[:200]}" if causes else ""


def _reader_failed(where: str, sensor: Sensor, e: Exception, causes: list[BaseException] = ()) -> InputError:
    return InputError(f"{where}: {sensor.name} reader failed "
                      f"({e.__class__.__name__}: {one_line(e)[:300]}{_why(causes)})")


def _channels_to_read(scn, sensor: Sensor, channels: list[str] | None, where: str) -> list[str]:
    """``channels``, or (None) every channel of the sensor that the files hold, in registry order."""
    if channels is not None:
        return list(channels)
    have = set(scn.available_dataset_names())
    found = [c for c in sensor.channels if c in have]
    if not found:
        raise InputError(f"{where}: no {sensor.name} channel in the file(s)")
    return found


@contextmanager
def _satpy_causes():
    """satpy logs a channel it cannot load (a traceback, e.g. ``KeyError: 'add_offset'``) and goes
    on without it: keep those tracebacks off the console and collect their exceptions, so that the
    one-line error can name the field that broke."""
    causes: list[BaseException] = []

    class _Keep(logging.Handler):
        def emit(self, record):
            if record.exc_info and record.exc_info[1] is not None:
                causes.append(record.exc_info[1])

    lg, keep = logging.getLogger("satpy"), _Keep(logging.WARNING)  # the file handler's own error is a warning
    saved = lg.propagate, lg.level
    lg.addHandler(keep)
    lg.propagate = False
    lg.setLevel(logging.WARNING)
    try:
        yield causes
    finally:
        lg.removeHandler(keep)
        lg.propagate = saved[0]
        lg.setLevel(saved[1])  # setLevel, not .level =: the children cache their effective level


def _load(scn, sensor: Sensor, channels: list[str], where: str) -> None:
    """Load each channel in its own calibration (reflectance / brightness temperature)."""
    with _satpy_causes() as causes:
        _load_channels(scn, sensor, channels, where)
    missing = [c for c in channels if c not in scn]
    if missing:
        raise InputError(f"{where}: channel(s) {', '.join(missing)} not readable from the file(s) "
                         f"(missing or wrongly named variables{_why(causes)})")


def _load_channels(scn, sensor: Sensor, channels: list[str], where: str) -> None:
    try:
        # satpy's FCI reader shares one netCDF4 handle across dask threads (pytroll/satpy#3043):
        # compute synchronously, which is also deterministic and memory-bounded per scene
        with warnings.catch_warnings(), dask.config.set(scheduler="synchronous"):
            warnings.simplefilter("ignore")
            # geostationary images north-up, east-right (row 0 north, column 0 west: the canonical
            # grid) by satpy's own flip, data and area together (SEVIRI and FCI files are south-up)
            orient = {"upper_right_corner": "NE"} if sensor.kind == "geostationary" else {}
            for c in channels:
                scn.load([c], calibration=sensor.channel(c).quantity, **orient)
    except Exception as e:
        raise _reader_failed(where, sensor, e) from None


def _sector(name: str, area) -> str:
    """A channel's area as a user recognises it: size and where its centre is."""
    lon, lat = area.get_lonlat(area.height // 2, area.width // 2)
    return f"{name} {area.width}x{area.height} px around lon {float(lon):.1f} lat {float(lat):.1f}"


def _check_one_sector(scn, channels: list[str], where: str) -> None:
    """Geostationary channels must be one sector of one satellite: the resolutions of one sector share
    its outer extent (to a pixel), so a larger difference, or another projection, is another scene."""
    first = channels[0]
    ref = scn[first].attrs["area"]
    for c in channels[1:]:
        area = scn[c].attrs["area"]
        pixel = max(abs(a.area_extent[2] - a.area_extent[0]) / a.width for a in (ref, area))
        if area.crs != ref.crs or np.max(np.abs(np.subtract(area.area_extent, ref.area_extent))) > pixel:
            raise InputError(f"{where}: bands on different sectors ({_sector(first, ref)}; "
                             f"{_sector(c, area)})")


def _check_one_time(scn, channels: list[str], tolerance_minutes: float, where: str) -> None:
    """All channels from one scan: their start times within ``tolerance_minutes`` (half a repeat cycle)."""
    times = {c: scn[c].attrs.get("start_time") for c in channels}
    times = {c: t for c, t in times.items() if t is not None}
    if len(times) < 2:
        return
    first, last = min(times, key=times.get), max(times, key=times.get)
    if (times[last] - times[first]).total_seconds() > tolerance_minutes * 60:
        raise InputError(f"{where}: bands from different times ({first} {times[first].isoformat()}, "
                         f"{last} {times[last].isoformat()}; more than {tolerance_minutes:g} min apart)")


def _night(lon: np.ndarray, lat: np.ndarray, when, limit_deg: float) -> np.ndarray:
    with np.errstate(invalid="ignore"):  # off-disk NaN, arccos rounding
        return sun_zenith_angle(when, lon, lat) > np.float32(limit_deg)


def _may_reach(block: GeosGrid, when, limit_deg: float) -> bool:
    """Whether any pixel of an on-disk window may have the sun lower than ``limit_deg``, from its edge
    pixels only.  The solar zenith angle is the great-circle distance to the subsolar point, which
    has no maximum inside a region smaller than a hemisphere: the edges bound it (less 1 degree for
    the curve between edge pixel centres).  A window crossing the limb has no such bound."""
    x, y = block.x, block.y
    ex = np.concatenate([x, x, np.full(y.size, x[0]), np.full(y.size, x[-1])])
    ey = np.concatenate([np.full(x.size, y[0]), np.full(x.size, y[-1]), y, y])
    lon, lat = geos_to_lonlat(ex, ey, block)
    if not np.isfinite(lon).all():
        return True
    return bool(sun_zenith_angle(when, lon, lat).max() > limit_deg - 1.0)


def _night_blocks(ds: xr.Dataset, grid: GeosGrid | None, when, limit_deg: float):
    """(row slice, night mask) over the scene.  A swath has its lon/lat; a geostationary grid's are
    computed block by block (a 500 m full disk is 22272 rows), and only for blocks whose edges say
    the limit may be reached (a day scene costs its edges, not a projection of every pixel)."""
    if grid is None:
        yield slice(None), _night(ds["lon"].values, ds["lat"].values, when, limit_deg)
        return
    for r in range(0, grid.nrows, ROW_BLOCK):
        block = grid.window(r, 0, min(ROW_BLOCK, grid.nrows - r), grid.ncols)
        if _may_reach(block, when, limit_deg):
            lon, lat = block.lonlat()
            yield slice(r, r + block.nrows), _night(lon.astype(np.float32), lat.astype(np.float32), when,
                                                    limit_deg)


def mask_night(ds: xr.Dataset, sensor: Sensor, when, grid: GeosGrid | None) -> list[str]:
    """Set reflectance pixels where the solar zenith angle exceeds ``sensor.night_zenith_deg`` to NaN,
    in place: there is no signal there, only noise and a calibration offset, and a model must not
    learn (or paint) daylight from it.  Returns the channels that had a valid pixel masked.  The sun
    is computed only when a reflectance channel is loaded, once for all of them."""
    refl = [c for c in channel_names(ds) if sensor.channel(c).quantity == "reflectance"]
    if not refl:
        return []
    masked = set()
    for rows, night in _night_blocks(ds, grid, when, sensor.night_zenith_deg):
        if not night.any():
            continue
        for c in refl:
            block = ds[c].data[rows]  # a view: the channel array itself is changed
            hit = night & np.isfinite(block)
            if hit.any():
                block[hit] = np.nan
                masked.add(c)
    return [c for c in refl if c in masked]


def _lon_range(lon: np.ndarray) -> str:
    """'west..east' of longitudes, across the antimeridian when that is the shorter way round."""
    east = lon % 360  # 0..360: a sector across 180 E/W is contiguous here
    if np.ptp(east) < np.ptp(lon):
        return f"{(east.min() + 180) % 360 - 180:.1f}..{(east.max() + 180) % 360 - 180:.1f}"
    return f"{lon.min():.1f}..{lon.max():.1f}"


def _crop(scn, bbox: tuple[float, float, float, float], channel: str, where: str):
    """The scene cropped to a lon/lat box; a box off the scene's area is an InputError saying so
    (pyresample answers a bare NotImplementedError when the two do not overlap)."""
    try:
        return scn.crop(ll_bbox=bbox)
    except NotImplementedError:
        area = scn[channel].attrs["area"]
        lon, lat = (np.asarray(v)[::10, ::10] for v in area.get_lonlats())
        ok = np.isfinite(lon) & np.isfinite(lat)
        extent = (f"lon {_lon_range(lon[ok])}, lat {lat[ok].min():.1f}..{lat[ok].max():.1f}" if ok.any()
                  else "no pixel on the Earth")
        raise InputError(f"{where}: the lon/lat box {' '.join(f'{v:g}' for v in bbox)} does not overlap the "
                         f"scene ({area.area_id}: {extent})") from None


def read_files(files: list[str | Path], sensor: Sensor, fmt: str | list[str],
               channels: list[str] | None = None,
               lonlat_bbox: tuple[float, float, float, float] | None = None) -> xr.Dataset:
    """Read ``channels`` (None: all of the sensor's the files hold) of one scene (one or more files of
    ``sensor``) into the canonical form, reflectance masked at night (``night_masked_channels``).

    ``lonlat_bbox`` (lon_min, lat_min, lon_max, lat_max) crops a geostationary scene lazily before
    anything is computed: satpy returns padded full disks (22272^2 px at 500 m for FCI HRFI)."""
    files = [str(f) for f in files]
    fmts = [fmt] if isinstance(fmt, str) else list(fmt)
    where = _where(files)
    _check_files(files)
    for c in channels or []:
        sensor.channel(c)  # unknown channel -> ConfigError naming it
    scn = _open(files, sensor, fmts, where)
    channels = _channels_to_read(scn, sensor, channels, where)
    _load(scn, sensor, channels, where)
    if sensor.kind == "geostationary":
        _check_one_sector(scn, channels, where)
    _check_one_time(scn, channels, sensor.cycle_minutes(fmts) / 2, where)
    try:
        # derived scenes read lazily through the loaded one's file handles: keep it alive (a
        # collected Scene closes them -> "NetCDF: Not a valid ID") until values are computed
        loaded = scn
        with dask.config.set(scheduler="synchronous"):
            if sensor.kind == "geostationary" and lonlat_bbox is not None:
                scn = _crop(scn, lonlat_bbox, channels[0], where)
            if sensor.kind == "geostationary" and len({scn[c].attrs["area"].width for c in channels}) > 1:
                scn = scn.resample(scn.finest_area(channels), resampler="native")  # one grid for all channels
            values = {c: scn[c].values for c in channels}
        del loaded
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{where}: cannot decode data "
                         f"({e.__class__.__name__}: {one_line(e)[:300]})") from None
    area = scn[channels[0]].attrs["area"]
    start = scn.start_time
    platform = str(scn[channels[0]].attrs.get("platform_name", ""))
    sources = [Path(f).name for f in files]
    grid = None
    if sensor.kind == "geostationary":
        grid = _grid_from_area(area, sensor, where)
        values = {c: np.ascontiguousarray(v, dtype=np.float32) for c, v in values.items()}
        ds = make_scene(values, sensor, start, grid=grid, platform=platform, source_files=sources)
    else:
        lon, lat = area.get_lonlats()
        ds = make_scene({c: v.astype(np.float32) for c, v in values.items()}, sensor, start,
                        lon=np.asarray(lon), lat=np.asarray(lat), platform=platform, source_files=sources)
    check_not_empty(ds, where)  # before night masking: a channel without any data is broken input
    ds.attrs[NIGHT_MASKED] = ";".join(mask_night(ds, sensor, start, grid))
    return ds

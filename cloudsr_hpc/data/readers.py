"""Real satellite files -> canonical scene, through satpy's own readers.

satpy does the format work (packed lines, chunked segments, calibration to reflectance/BT);
this module only picks the reader from the sensor registry, puts the result in the canonical
orientation, and turns every failure into one line naming the file and what is wrong.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import dask
import numpy as np
import xarray as xr

from ..errors import InputError, one_line
from .geometry import GeosGrid
from .scene import check_not_empty, make_scene
from .sensors import Sensor

log = logging.getLogger(__name__)

DISK_HALF_ANGLE = 1856 * 3000.403165817 / 35785831.0  # scan half-angle of the full disk [rad]


def _grid_from_area(area, sensor: Sensor) -> tuple[GeosGrid, bool, bool]:
    """GeosGrid of a satpy AreaDefinition, plus whether rows / columns must be flipped."""
    x0, y0, x1, y1 = area.area_extent  # satpy may give west>east / south>north (SEVIRI, FCI south-up)
    flip_cols, flip_rows = x0 > x1, y0 > y1
    west, east = sorted((x0, x1))
    south, north = sorted((y0, y1))
    step = (east - west) / area.width
    p = area.crs.to_dict()
    h = float(p.get("h", 35785831.0))
    # A symmetric full-disk envelope (>= the Earth disk) that this window is aligned to; only the
    # window's coordinates matter downstream, and those are exact whatever the envelope.
    half = max(h * DISK_HALF_ANGLE, abs(west), abs(east), abs(south), abs(north)) / step
    full = 2 * int(np.ceil(half - 1e-3))  # tolerate float32 extents (the native reader)
    col0, row0 = west / step + full / 2, full / 2 - north / step
    if abs(col0 - round(col0)) > 1e-3 or abs(row0 - round(row0)) > 1e-3:
        raise InputError(f"{sensor.name}: area extent {area.area_extent} is not aligned to a symmetric "
                         f"full-disk grid of step {step:.3f} m")
    col0, row0 = int(round(col0)), int(round(row0))
    grid = GeosGrid(sub_lon=float(p.get("lon_0", 0.0)), step=float(step), full_rows=full, full_cols=full,
                    row0=row0, col0=col0, nrows=area.height, ncols=area.width, h=h,
                    a=float(area.crs.ellipsoid.semi_major_metre), b=float(area.crs.ellipsoid.semi_minor_metre))
    return grid, flip_rows, flip_cols


def _orient(arr: np.ndarray, flip_rows: bool, flip_cols: bool) -> np.ndarray:
    if flip_rows:
        arr = arr[::-1]
    if flip_cols:
        arr = arr[:, ::-1]
    return np.ascontiguousarray(arr, dtype=np.float32)


def read_files(files: list[str | Path], sensor: Sensor, fmt: str | list[str], channels: list[str],
               lonlat_bbox: tuple[float, float, float, float] | None = None) -> xr.Dataset:
    """Read ``channels`` of one scene (one or more files of ``sensor``) into the canonical form.

    ``lonlat_bbox`` (lon_min, lat_min, lon_max, lat_max) crops a geostationary scene lazily before
    anything is computed: satpy returns padded full disks (22272^2 px at 500 m for FCI HRFI)."""
    files = [str(f) for f in files]
    fmts = [fmt] if isinstance(fmt, str) else list(fmt)
    readers = sorted({sensor.formats[f].reader for f in fmts})
    where = files[0] if len(files) == 1 else f"{Path(files[0]).parent}/{{{len(files)} files}}"
    for f in files:
        p = Path(f)
        if not p.exists():
            raise InputError(f"{f}: no such file")
        if p.stat().st_size == 0:
            raise InputError(f"{f}: empty file")
    for c in channels:
        sensor.channel(c)  # unknown channel -> ConfigError naming it
    try:
        from satpy import Scene
        # satpy's FCI reader shares one netCDF4 handle across dask threads (pytroll/satpy#3043):
        # compute synchronously, which is also deterministic and memory-bounded per scene
        with warnings.catch_warnings(), dask.config.set(scheduler="synchronous"):
            warnings.simplefilter("ignore")
            scn = Scene(filenames={r: files for r in readers} if len(readers) > 1 else files, reader=readers[0]
                        if len(readers) == 1 else None)
            calib = {c: sensor.channel(c).quantity for c in channels}
            for c in channels:
                scn.load([c], calibration=calib[c])
    except InputError:
        raise
    except Exception as e:  # satpy raises many types for broken files; report them as one line
        raise InputError(f"{where}: {sensor.name} reader failed ({e.__class__.__name__}: {one_line(e)[:300]})") from None
    missing = [c for c in channels if c not in scn]
    if missing:
        raise InputError(f"{where}: channel(s) {', '.join(missing)} not readable from the file(s) "
                         f"(missing or wrongly named variables)")
    try:
        # derived scenes read lazily through the loaded one's file handles: keep it alive (a
        # collected Scene closes them -> "NetCDF: Not a valid ID") until values are computed
        loaded = scn
        with dask.config.set(scheduler="synchronous"):
            if sensor.kind == "geostationary" and lonlat_bbox is not None:
                scn = scn.crop(ll_bbox=lonlat_bbox)
            if sensor.kind == "geostationary" and len({scn[c].attrs["area"].width for c in channels}) > 1:
                scn = scn.resample(scn.finest_area(channels), resampler="native")  # one grid for all channels
            values = {c: scn[c].values for c in channels}
        del loaded
    except Exception as e:
        raise InputError(f"{where}: cannot decode data ({e.__class__.__name__}: {one_line(e)[:300]})") from None
    area = scn[channels[0]].attrs["area"]
    start = scn.start_time
    platform = str(scn[channels[0]].attrs.get("platform_name", ""))
    if sensor.kind == "geostationary":
        with warnings.catch_warnings():  # pyproj warns that a PROJ dict loses information: not ours
            warnings.simplefilter("ignore")
            grid, fr, fc = _grid_from_area(area, sensor)
        values = {c: _orient(v, fr, fc) for c, v in values.items()}
        ds = make_scene(values, sensor, start, grid=grid, platform=platform, source_files=[Path(f).name for f in files])
    else:
        lon, lat = area.get_lonlats()
        ds = make_scene({c: v.astype(np.float32) for c, v in values.items()}, sensor, start,
                        lon=np.asarray(lon), lat=np.asarray(lat), platform=platform,
                        source_files=[Path(f).name for f in files])
    check_not_empty(ds, where)
    return ds

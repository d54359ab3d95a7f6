"""The canonical scene: one in-memory form and one on-disk form for every sensor.

In memory: an ``xarray.Dataset`` with one float32 variable per channel on ``(y, x)``, NaN where
off-disk/invalid, in the package's canonical orientation (row 0 north, column 0 west).

* Geostationary scenes carry 1-D projection coordinates ``x``/``y`` [m] and a scalar grid-mapping
  variable ``geostationary`` (CF ``grid_mapping_name: geostationary``, ``sweep_angle_axis`` and
  ``crs_wkt`` as pyproj writes them); the exact window of the full-disk grid, sweep axis included,
  is kept in ``grid_*`` global attributes so it rebuilds a :class:`GeosGrid`.
* Swath scenes carry 2-D ``lat``/``lon`` coordinates instead.

On disk: CF-1.10 NetCDF4 (HDF5) with zlib+shuffle compression, chunked, ``_FillValue`` NaN.  The
same form is the inference output and the evaluation input.  Files are written to a temporary
name and renamed, so a file that exists is complete.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import xarray as xr

from ..core.files import atomic_write
from ..errors import InputError
from .geometry import GeosGrid
from .sensors import STANDARD_NAMES, Sensor

GRID_MAPPING = "geostationary"
# global attribute: the reflectance channels set to NaN at night when read (";"-joined names)
NIGHT_MASKED = "night_masked_channels"


def channel_attrs(sensor: Sensor, name: str) -> dict:
    """CF attributes of one channel variable."""
    ch = sensor.channel(name)
    return {"units": ch.units, "standard_name": STANDARD_NAMES[ch.quantity],
            "long_name": f"{sensor.long_name} {name} {ch.quantity.replace('_', ' ')}",
            "wavelength_um": ch.wavelength_um}


def history_line(what: str) -> str:
    """A CF ``history`` entry: when, which program, what."""
    from .. import __version__
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    return f"{now} cloudsr-hpc {__version__}: {what}"


def make_scene(values: dict[str, np.ndarray], sensor: Sensor, start_time: dt.datetime,
               grid: GeosGrid | None = None, lon: np.ndarray | None = None, lat: np.ndarray | None = None,
               platform: str = "", source_files: list[str] | None = None, extra_attrs: dict | None = None,
               ) -> xr.Dataset:
    """Assemble a canonical scene from channel arrays (physical units, canonical orientation)."""
    if (grid is None) == (lon is None):
        raise ValueError("give either a geostationary grid or swath lon/lat")
    data_vars = {}
    for name, arr in values.items():
        attrs = channel_attrs(sensor, name)
        attrs.update({"grid_mapping": GRID_MAPPING} if grid is not None else {"coordinates": "lat lon"})
        data_vars[name] = (("y", "x"), np.asarray(arr, dtype=np.float32), attrs)
    attrs = {"Conventions": "CF-1.10", "title": f"{sensor.long_name} scene (cloudsr-hpc canonical form)",
             "sensor": sensor.name, "platform": platform, "start_time": start_time.isoformat(),
             "source_files": ";".join(source_files or []), "history": history_line("canonical scene written")}
    attrs.update(extra_attrs or {})
    if grid is not None:
        coords = {"x": ("x", grid.x, {"standard_name": "projection_x_coordinate", "units": "m",
                                      "axis": "X"}),
                  "y": ("y", grid.y, {"standard_name": "projection_y_coordinate", "units": "m",
                                      "axis": "Y"})}
        data_vars[GRID_MAPPING] = ((), np.int32(0), grid.cf_grid_mapping())
        attrs.update(grid.to_attrs())
    else:
        coords = {"lat": (("y", "x"), np.asarray(lat, np.float32),
                          {"standard_name": "latitude", "units": "degrees_north"}),
                  "lon": (("y", "x"), np.asarray(lon, np.float32),
                          {"standard_name": "longitude", "units": "degrees_east"})}
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def channel_names(ds: xr.Dataset) -> list[str]:
    return [v for v in ds.data_vars if ds[v].dims == ("y", "x")]


def scene_grid(ds: xr.Dataset) -> GeosGrid | None:
    """The geostationary window of a scene (None for swaths)."""
    if "grid_step" not in ds.attrs:
        return None
    return GeosGrid.from_attrs(ds.attrs)


def scene_time(ds: xr.Dataset) -> dt.datetime:
    return dt.datetime.fromisoformat(ds.attrs["start_time"])


def encoding_for(ds: xr.Dataset, chunk: int = 512, complevel: int = 4) -> dict:
    enc = {}
    for name in channel_names(ds):
        ny, nx = ds[name].shape
        enc[name] = {"zlib": True, "complevel": complevel, "shuffle": True, "_FillValue": np.float32(np.nan),
                     "chunksizes": (min(chunk, ny), min(chunk, nx)), "dtype": "float32"}
    for c in ("lat", "lon"):
        if c in ds.coords:
            enc[c] = {"zlib": True, "complevel": complevel, "_FillValue": None}
    for c in ("x", "y"):
        if c in ds.coords:
            enc[c] = {"_FillValue": None}
    return enc


def write_scene(ds: xr.Dataset, path: str | Path, chunk: int = 512, complevel: int = 4) -> Path:
    """Write a canonical scene as CF NetCDF4; temp name + rename, nothing partial is ever visible."""
    path = Path(path)
    with atomic_write(path) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=encoding_for(ds, chunk, complevel))
    return path


def read_scene(path: str | Path, channels: list[str] | None = None) -> xr.Dataset:
    """Open a canonical scene file, checking it is one; errors name the file and what is wrong."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    try:
        ds = xr.open_dataset(path, engine="netcdf4")
        ds.load()
    except (OSError, ValueError, RuntimeError) as e:
        raise InputError(f"{path}: cannot read as NetCDF4/HDF5 ({e.__class__.__name__}: {e})") from None
    have = channel_names(ds)
    if not have:
        raise InputError(f"{path}: no (y, x) channel variables: not a canonical scene")
    for key in ("sensor", "start_time"):
        if key not in ds.attrs:
            raise InputError(f"{path}: global attribute '{key}' missing: not a canonical scene")
    if channels is not None:
        missing = [c for c in channels if c not in have]
        if missing:
            raise InputError(f"{path}: channel(s) {', '.join(missing)} missing (file has {', '.join(have)})")
        ds = ds[channels + [v for v in ds.data_vars if v not in have]]
    check_not_empty(ds, str(path))
    return ds


def check_not_empty(ds: xr.Dataset, where: str) -> None:
    """Every channel has a valid pixel, except one that is empty because it was read at night
    (``night_masked_channels``): it had data, the sun gave it no signal."""
    night = set(ds.attrs.get(NIGHT_MASKED, "").split(";"))
    for name in channel_names(ds):
        if name not in night and not np.isfinite(ds[name].values).any():
            raise InputError(f"{where}: channel {name} has no valid pixel (all NaN)")

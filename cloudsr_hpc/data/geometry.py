"""Geostationary grids in the one orientation the whole package uses.

Canonical orientation: row 0 is the northernmost line, column 0 the westernmost; projection
coordinates ``x`` (metres, east positive) increase with the column, ``y`` (north positive)
decreases with the row.  File formats store other orientations (SEVIRI south-up/east-left, FCI
south-up); each writer/reader converts at its boundary so nothing else has to think about it.

A :class:`GeosGrid` is a window (``row0, col0, nrows, ncols``) of a full-disk grid of
``full_rows x full_cols`` pixels of ``step`` metres at the sub-satellite point, symmetric about
the sub-satellite point: pixel centre of column j is ``(col0 + j + 0.5 - full_cols/2) * step``.

``sweep`` is the fixed-grid scan geometry: ``y`` for MSG/MTG (EUMETSAT), ``x`` for GOES ABI.  It
changes where an off-nadir pixel lies on the Earth (by 15-25 km at the CONUS corners), so it
travels with the grid everywhere: the pyproj CRS, the CF grid mapping, the ``grid_sweep``
attribute of every scene and product.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pyproj

GEOS_HEIGHT = 35785831.0  # satellite height above the ellipsoid [m]
EQUATORIAL_RADIUS = 6378169.0  # the ellipsoid EUMETSAT uses for MSG/MTG grids [m]
POLAR_RADIUS = 6356583.8


@dataclass(frozen=True)
class GeosGrid:
    sub_lon: float
    step: float  # pixel size at the sub-satellite point [m]
    full_rows: int
    full_cols: int
    row0: int = 0
    col0: int = 0
    nrows: int | None = None
    ncols: int | None = None
    h: float = GEOS_HEIGHT
    a: float = EQUATORIAL_RADIUS
    b: float = POLAR_RADIUS
    sweep: str = "y"  # last, so that positional construction of older code stays valid

    def __post_init__(self):
        if self.sweep not in ("x", "y"):
            raise ValueError(f"sweep must be 'x' or 'y', got {self.sweep!r}")
        if self.nrows is None:
            object.__setattr__(self, "nrows", self.full_rows - self.row0)
        if self.ncols is None:
            object.__setattr__(self, "ncols", self.full_cols - self.col0)
        if not (0 <= self.row0 and self.row0 + self.nrows <= self.full_rows
                and 0 <= self.col0 and self.col0 + self.ncols <= self.full_cols):
            raise ValueError(f"window {self.row0}+{self.nrows}, {self.col0}+{self.ncols} outside "
                             f"the {self.full_rows}x{self.full_cols} disk")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.nrows, self.ncols)

    @property
    def x(self) -> np.ndarray:
        """Pixel-centre x [m], west to east."""
        return (self.col0 + np.arange(self.ncols) + 0.5 - self.full_cols / 2) * self.step

    @property
    def y(self) -> np.ndarray:
        """Pixel-centre y [m], north to south."""
        return (self.full_rows / 2 - self.row0 - np.arange(self.nrows) - 0.5) * self.step

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """(x_west, y_south, x_east, y_north) outer edges [m], as pyresample wants it."""
        x0 = (self.col0 - self.full_cols / 2) * self.step
        y1 = (self.full_rows / 2 - self.row0) * self.step
        return (x0, y1 - self.nrows * self.step, x0 + self.ncols * self.step, y1)

    def window(self, row0: int, col0: int, nrows: int, ncols: int) -> GeosGrid:
        """A sub-window; offsets are relative to this grid."""
        return dataclasses.replace(self, row0=self.row0 + row0, col0=self.col0 + col0, nrows=nrows,
                                   ncols=ncols)

    def scaled(self, factor: int) -> GeosGrid:
        """The same window at ``factor`` times finer resolution (the HR target grid of a pair)."""
        return dataclasses.replace(self, step=self.step / factor, full_rows=self.full_rows * factor,
                                   full_cols=self.full_cols * factor, row0=self.row0 * factor,
                                   col0=self.col0 * factor, nrows=self.nrows * factor,
                                   ncols=self.ncols * factor)

    def proj_dict(self) -> dict:
        return {"proj": "geos", "lon_0": self.sub_lon, "h": self.h, "a": self.a, "b": self.b,
                "sweep": self.sweep, "units": "m"}

    def crs(self) -> pyproj.CRS:
        """The grid's projection; built once per (lon_0, h, a, b, sweep), windows share it."""
        return _geos_crs(self.sub_lon, self.h, self.a, self.b, self.sweep)

    def area_definition(self, area_id: str = "cloudsr_geos"):
        from pyresample.geometry import AreaDefinition
        return AreaDefinition(area_id, area_id, area_id, self.crs(), self.ncols, self.nrows, self.extent)

    def lonlat(self) -> tuple[np.ndarray, np.ndarray]:
        """Longitude/latitude of pixel centres (NaN off-disk), float64 arrays of ``shape``."""
        xx, yy = np.meshgrid(self.x, self.y)
        return geos_to_lonlat(xx, yy, self)

    def cf_grid_mapping(self) -> dict:
        """CF-1.x attributes of the grid-mapping variable, as pyproj writes them (``sweep_angle_axis``,
        the ellipsoid and ``crs_wkt`` included) so any CF reader rebuilds the same projection."""
        return {k: v for k, v in self.crs().to_cf().items() if v is not None}  # netCDF4 cannot store None

    def to_attrs(self) -> dict:
        return {f"grid_{f.name}": getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_attrs(cls, attrs: dict) -> GeosGrid:
        kw = {}
        for f in dataclasses.fields(cls):
            key = f"grid_{f.name}"
            if key not in attrs and f.name in ADDED_FIELDS:
                continue  # a file written before the field existed: the default is what it meant
            kw[f.name] = _from_attr(attrs[key], f.type)
        return cls(**kw)


# Fields added after files were written without them; their defaults describe those files
# (every grid before ``sweep`` was an MSG/MTG one, sweep y).
ADDED_FIELDS = ("sweep",)


def _from_attr(value, annotation: str):
    """A ``grid_*`` attribute back to the field's type (NetCDF hands back numpy scalars / str)."""
    if annotation in ("int", "int | None"):
        return int(value)
    if annotation == "str":
        return str(value)
    return float(value)


@lru_cache(maxsize=32)
def _geos_crs(sub_lon: float, h: float, a: float, b: float, sweep: str) -> pyproj.CRS:
    return pyproj.CRS.from_dict({"proj": "geos", "lon_0": sub_lon, "h": h, "a": a, "b": b, "sweep": sweep,
                                 "units": "m"})


def window_starts(n: int, size: int, stride: int) -> list[int]:
    """Starts of windows of ``size`` every ``stride`` over [0, n), the last one flush with the end
    (so the union covers everything); [] when not even one window fits."""
    if n < size:
        return []
    starts = list(range(0, n - size + 1, stride))
    if starts[-1] != n - size:
        starts.append(n - size)
    return starts


def _proj(grid: GeosGrid) -> pyproj.Proj:
    """The projection of the grid's (cached) CRS: sweep axis, ellipsoid and height included."""
    return pyproj.Proj(grid.crs())


def geos_to_lonlat(x: np.ndarray, y: np.ndarray, grid: GeosGrid) -> tuple[np.ndarray, np.ndarray]:
    """Inverse geostationary projection; NaN where the line of sight misses the Earth."""
    lon, lat = _proj(grid)(np.asarray(x, float), np.asarray(y, float), inverse=True, errcheck=False)
    bad = ~(np.isfinite(lon) & np.isfinite(lat)) | (np.abs(lon) > 360)
    return np.where(bad, np.nan, lon), np.where(bad, np.nan, lat)


def lonlat_to_geos(lon: np.ndarray, lat: np.ndarray, grid: GeosGrid) -> tuple[np.ndarray, np.ndarray]:
    """Forward geostationary projection [m]; NaN where the point is not visible from the satellite."""
    x, y = _proj(grid)(np.asarray(lon, float), np.asarray(lat, float), errcheck=False)
    bad = ~(np.isfinite(x) & np.isfinite(y)) | (np.abs(x) > 1e8)
    return np.where(bad, np.nan, x), np.where(bad, np.nan, y)


SEVIRI_FULL_DISK = GeosGrid(sub_lon=0.0, step=3000.403165817, full_rows=3712, full_cols=3712)

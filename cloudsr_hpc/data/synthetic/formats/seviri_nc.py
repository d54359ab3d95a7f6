"""MSG SEVIRI Level 1.5 image data in EUMETSAT's NetCDF format, as satpy's ``seviri_l1b_nc`` reads it.

One file per repeat cycle holds the VIS/IR channels ``ch1``..``ch11`` as 10-bit counts with a
``scale_factor``/``add_offset`` per channel (counts -> radiance), per-line acquisition times and
quality flags, the orbit polynomials and the navigation attributes.  HRV (``ch12``) is omitted:
satpy's NC reader does not read it.

Orientation, as satpy's reader interprets the file: it flips the rows (file row 0 is the southern
line) and not the columns, and with ``type_of_earth_model`` 1 its extent is
``((1856 - west) s, (south - 1857) s, (1857 - east) s, (north - 1856) s)`` in SEVIRI line/column
numbers -- the canonical window's own extent, with the columns west to east.  So the file stores the
canonical array upside down, and the loaded data come back exactly in canonical orientation.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import netCDF4
import numpy as np

from ....core.files import atomic_write
from ...geometry import GeosGrid
from .seviri_calib import (
    COUNT_MAX,
    RADIANCE_TYPE,
    VISIR_CHANNELS,
    LinearCalibration,
    Platform,
    ScanTimes,
    SeviriWindow,
    fields_to_counts,
    orbit_polynomial_coefs,
    orbit_polynomial_windows,
    to_cds,
)
from .seviri_calib import (
    platform as lookup_platform,
)

FILE_NAME = "W_XX-EUMETSAT-Darmstadt,VIS+IR+HRV+IMAGERY,{satid}+SEVIRI_C_EUMG_{time:%Y%m%d%H%M%S}.nc"
ROWS, COLS = "num_rows_vis_ir", "num_columns_vis_ir"


def write_seviri_nc(out_dir, grid: GeosGrid, fields: dict[str, np.ndarray], start_time: dt.datetime,
                    end_time: dt.datetime | None = None, platform: str = "Meteosat-11") -> list[Path]:
    """Write one SEVIRI L1.5 NetCDF file of ``grid`` (a window or the full disk) for the slot
    ``start_time``..``end_time`` (15 minutes by default, 5 for rapid scans); return its path."""
    plat = lookup_platform(platform)
    times = ScanTimes.for_slot(start_time, end_time)
    window = SeviriWindow.from_grid(grid)
    # satpy's NC reader takes the Sun-Earth distance at the true repeat cycle start
    encoded = fields_to_counts(grid, fields, plat, times.repeat_cycle_start, RADIANCE_TYPE)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / FILE_NAME.format(satid=plat.msg_name, time=times.repeat_cycle_start)
    with atomic_write(path) as tmp:
        with netCDF4.Dataset(tmp, "w", format="NETCDF4") as nc:
            _write_global_attrs(nc, grid, window, times, plat)
            _write_channels(nc, grid, encoded)
            _write_line_info(nc, window, times)
            _write_orbit(nc, grid, times)
    return [path]


def _write_global_attrs(nc, grid: GeosGrid, window: SeviriWindow, times: ScanTimes, plat: Platform):
    start_day, start_ms = to_cds(times.repeat_cycle_start)
    end_day, end_ms = to_cds(times.slot_end)
    nc.setncatts({
        "title": "MSG SEVIRI Level 1.5 image data (synthetic)",
        "institution": "EUMETSAT",
        "comment": "synthetic scene written by cloudsr_hpc; calibration adapted per channel to the field",
        "satellite_id": np.int32(plat.satellite_id),
        "nominal_longitude": np.float32(grid.sub_lon),
        "longitude_of_SSP": np.float64(grid.sub_lon),
        # km, as in the L1.5 header; the reader averages the two polar radii
        "equatorial_radius": grid.a / 1000.0,
        "north_polar_radius": grid.b / 1000.0,
        "south_polar_radius": grid.b / 1000.0,
        # 1: no half-pixel georeferencing offset, which gives the symmetric extent of GeosGrid
        "type_of_earth_model": "0x01",
        "vis_ir_grid_origin": "0x02",  # south-east corner, the only origin the reader supports
        "vis_ir_column_dir_grid_step": grid.step / 1000.0,
        "vis_ir_line_dir_grid_step": grid.step / 1000.0,
        "south_most_line": np.int32(window.south),
        "north_most_line": np.int32(window.north),
        "east_most_pixel": np.int32(window.east),
        "west_most_pixel": np.int32(window.west),
        "true_repeat_cycle_start_day": np.int32(start_day),
        "true_repeat_cycle_start_mi_sec": np.int32(start_ms),
        "planned_repeat_cycle_end_day": np.int32(end_day),
        "planned_repeat_cycle_end_mi_sec": np.int32(end_ms),
        # the reader picks the slot length (15 or 5 min) from these flags
        "nominal_image_scanning": "F" if times.rapid_scan else "T",
        "reduced_scanning": "T" if times.rapid_scan else "F",
    })


def _write_channels(nc, grid: GeosGrid, encoded: dict[str, tuple[np.ndarray, LinearCalibration]]):
    nc.createDimension(ROWS, grid.nrows)
    nc.createDimension(COLS, grid.ncols)
    nc.createDimension("channels_dim", 12)
    # the IR channels' radiance definition; the VIS entries are unused by the reader
    chan_proc = nc.createVariable("planned_chan_processing", "u1", ("channels_dim",))
    chan_proc[:] = np.full(12, RADIANCE_TYPE, np.uint8)

    chunks = (min(grid.nrows, 464), grid.ncols)  # 464 = one eighth of the disk's lines
    for i, name in enumerate(VISIR_CHANNELS, start=1):
        counts, cal = encoded.get(name, (None, LinearCalibration(1.0, 0.0)))
        # fill value 0 = "no data", as the reader treats it; a channel that is not given is never
        # written, so its (unallocated) chunks read back as fill at no cost
        var = nc.createVariable(f"ch{i}", "i2", (ROWS, COLS), fill_value=np.int16(0), zlib=True,
                                complevel=1, shuffle=True, chunksizes=chunks)
        var.setncatts({
            "long_name": f"Channel {i} ({name}) image data",
            "comment": "counts; radiance [mW m-2 sr-1 (cm-1)-1] = count * scale_factor + add_offset",
            "units": "count",
            "valid_min": np.int16(0),
            "valid_max": np.int16(COUNT_MAX),
            "scale_factor": np.float32(cal.gain),
            "add_offset": np.float32(cal.offset),
        })
        if counts is not None:
            var.set_auto_maskandscale(False)  # these are already the packed counts
            var[:] = counts[::-1].astype(np.int16)  # file row 0 is the southern line


def _write_line_info(nc, window: SeviriWindow, times: ScanTimes):
    """Per line and channel: mean acquisition time and nominal validity/quality flags."""
    nc.createDimension("channels_vis_ir_dim", len(VISIR_CHANNELS))
    dims = (ROWS, "channels_vis_ir_dim")
    days, msecs = times.line_times(window.lines)  # file rows run south to north
    nominal = np.ones_like(days)  # 1 = nominal validity / quality (the reader masks 4, "do not use")
    per_line = {
        "channel_data_visir_data_l10_line_mean_acquisition_time_day": ("i4", days),
        "channel_data_visir_data_l10_line_mean_acquisition_msec": ("i4", msecs),
        "channel_data_visir_data_line_validity": ("u1", nominal),
        "channel_data_visir_data_line_radiometric_quality": ("u1", nominal),
        "channel_data_visir_data_line_geometric_quality": ("u1", nominal),
    }
    for name, (dtype, values) in per_line.items():
        var = nc.createVariable(name, dtype, dims)
        var[:] = np.repeat(values[:, None], len(VISIR_CHANNELS), axis=1)  # same for every channel


def _write_orbit(nc, grid: GeosGrid, times: ScanTimes):
    windows = orbit_polynomial_windows(times)
    nc.createDimension("orbit_polynomial_dim_row", len(windows))
    nc.createDimension("orbit_polynomial_dim_col", 8)
    coefs = orbit_polynomial_coefs(grid)
    for axis, c in zip("xyz", coefs, strict=True):
        var = nc.createVariable(f"orbit_polynomial_{axis}", "f8",
                                ("orbit_polynomial_dim_row", "orbit_polynomial_dim_col"))
        var[:] = np.tile(c, (len(windows), 1))
    for edge, col in (("start", 0), ("end", 1)):
        cds = np.array([to_cds(w[col]) for w in windows])
        for unit, j in (("day", 0), ("msec", 1)):
            var = nc.createVariable(f"orbit_polynomial_{edge}_time_{unit}", "i4",
                                    ("orbit_polynomial_dim_row",))
            var[:] = cds[:, j]

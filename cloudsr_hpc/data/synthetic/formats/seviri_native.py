"""MSG SEVIRI Level 1.5 image data in EUMETSAT's native format (``.nat``), as satpy's
``seviri_l1b_native`` reads it.

Layout (big-endian): the ASCII archive headers (15_MAIN_PRODUCT_HEADER, 15_SECONDARY_PRODUCT_HEADER
with the selected rectangle, i.e. the region of interest), the binary 15_DATA_HEADER, one record
per image line holding a packet per channel (line header + 10-bit packed counts), and the
15TRAILER.  The header and trailer records are satpy's own dtypes; HRV is left out of
``SelectedBandIDs``, which the reader supports, so no HRV lines are stored.

Orientation: the lines run south to north (SEVIRI line numbers 1..3712 from the south) and the
pixels of a line east to west; satpy returns them as stored with a matching extent
``((1857 - east) s, (north - 1856) s, (1856 - west) s, (south - 1857) s)`` for Earth model 1 --
the canonical window's extent with both axes reversed (x east->west, y south->north).
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
from satpy.readers.core.eum import time_cds_short
from satpy.readers.seviri_l1b_native_hdr import GSDTRecords, get_native_header, native_trailer

from ....core.files import atomic_write
from ...geometry import GeosGrid
from .seviri_calib import (
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

SELECTED_BANDS = "X" * len(VISIR_CHANNELS) + "-"  # VIS/IR channels in, HRV out
HEADER_DTYPE = get_native_header(with_archive_header=True)
LINES_PER_BLOCK = 464  # lines encoded and written at a time (1/8 of the disk)


def write_seviri_native(out_dir, grid: GeosGrid, fields: dict[str, np.ndarray], start_time: dt.datetime,
                        end_time: dt.datetime | None = None, platform: str = "Meteosat-11") -> list[Path]:
    """Write one SEVIRI L1.5 native file of ``grid`` (a region of interest or the full disk; the
    number of columns must be a multiple of 4, as the 10-bit packing requires) for the slot
    ``start_time``..``end_time`` (15 minutes by default, 5 for rapid scans); return its path."""
    plat = lookup_platform(platform)
    times = ScanTimes.for_slot(start_time, end_time)
    window = SeviriWindow.from_grid(grid)
    if grid.ncols % 4:
        # the reader would pad the lines and widen the area by the padding
        raise ValueError(f"native files need a multiple of 4 columns, got {grid.ncols}")
    # satpy's native reader takes the Sun-Earth distance at the forward scan start
    encoded = fields_to_counts(grid, fields, plat, times.scan_start, RADIANCE_TYPE)
    line_dtype = _line_record_dtype(grid.ncols)
    size = HEADER_DTYPE.itemsize + grid.nrows * line_dtype.itemsize + native_trailer.itemsize

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / (f"{plat.msg_name}-SEVI-MSG15-0100-NA-"
                      f"{times.scan_end:%Y%m%d%H%M%S.%f}000Z-NA.nat")  # named after the scan end
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(_header(grid, window, times, plat, encoded, size).tobytes())
            for block in _line_blocks(grid, window, times, plat, encoded, line_dtype):
                f.write(block.tobytes())
            f.write(_trailer(window, times, plat).tobytes())
    return [path]


# ----------------------------------------------------------------------------- image data

def _line_record_dtype(ncols: int) -> np.dtype:
    """One line of all VIS/IR channels: per channel a packet header, the line header the reader
    looks at (acquisition time, validity) and the 10-bit packed pixels."""
    packet = np.dtype([
        ("gp_pk", [("GP_PK_HEADER", GSDTRecords.gp_pk_header), ("GP_PK_SH1", GSDTRecords.gp_pk_sh1)]),
        ("version", np.uint8),
        ("satid", np.uint16),
        ("time", (np.uint16, 5)),
        ("lineno", np.uint32),
        ("chan_id", np.uint8),
        ("acq_time", time_cds_short),
        ("line_validity", np.uint8),
        ("line_rquality", np.uint8),
        ("line_gquality", np.uint8),
        ("line_data", (np.uint8, ncols * 10 // 8)),
    ])
    return np.dtype([("visir", (packet, len(VISIR_CHANNELS)))]).newbyteorder(">")


def pack10(counts: np.ndarray) -> np.ndarray:
    """Pack 10-bit counts (..., n), n a multiple of 4, big-endian into (..., 5 n / 4) bytes:
    the inverse of satpy's ``dec10216``."""
    c = counts.astype(np.uint16).reshape(*counts.shape[:-1], -1, 4)
    c0, c1, c2, c3 = (c[..., k] for k in range(4))
    packed = np.stack([c0 >> 2, ((c0 & 0x3) << 6) | (c1 >> 4), ((c1 & 0xF) << 4) | (c2 >> 6),
                       ((c2 & 0x3F) << 2) | (c3 >> 8), c3 & 0xFF], axis=-1)
    return packed.astype(np.uint8).reshape(*counts.shape[:-1], -1)


def _line_blocks(grid: GeosGrid, window: SeviriWindow, times: ScanTimes, plat: Platform,
                 encoded: dict[str, tuple[np.ndarray, LinearCalibration]], line_dtype: np.dtype):
    """Yield the line records south to north, LINES_PER_BLOCK at a time."""
    lines = window.lines
    days, msecs = times.line_times(lines)
    for start in range(0, len(lines), LINES_PER_BLOCK):
        sl = slice(start, start + LINES_PER_BLOCK)
        block = np.zeros(len(lines[sl]), line_dtype)
        pk = block["visir"]
        pk["version"] = 1
        pk["satid"] = plat.satellite_id
        pk["lineno"] = lines[sl, None]
        pk["chan_id"] = np.arange(1, len(VISIR_CHANNELS) + 1)
        pk["acq_time"]["Days"] = days[sl, None]
        pk["acq_time"]["Milliseconds"] = msecs[sl, None]
        pk["line_validity"] = pk["line_rquality"] = pk["line_gquality"] = 1  # nominal
        for k, name in enumerate(VISIR_CHANNELS):
            if name in encoded:  # channels not given stay count 0 = no data
                # canonical row r is SEVIRI line 3712 - r; canonical column 0 is the west end
                rows = grid.nrows - 1 - np.arange(grid.nrows)[sl]
                pk["line_data"][:, k] = pack10(encoded[name][0][rows, ::-1])
        yield block


# ----------------------------------------------------------------------------- header

def _ascii_field(record, key: str, value) -> None:
    """One 80-byte line of the ASCII archive headers: 'Key<padding>: value'."""
    record[key]["Name"] = f"{key:<28}: ".encode()
    record[key]["Value"] = f"{value}".ljust(49).encode() + b"\n"


def _set_cds(record, t: dt.datetime) -> None:
    """Fill a time_cds_short/time_cds/time_cds_expanded record."""
    record["Days"], record["Milliseconds"] = to_cds(t)


def _header(grid: GeosGrid, window: SeviriWindow, times: ScanTimes, plat: Platform,
            encoded: dict[str, tuple[np.ndarray, LinearCalibration]], file_size: int) -> np.ndarray:
    hdr = np.zeros(1, HEADER_DTYPE)
    main = hdr["15_MAIN_PRODUCT_HEADER"]
    _ascii_field(main, "FormatName", "NATIVE")  # the reader recognises the archive header by this
    _ascii_field(main, "TotalFileSize", file_size)
    _ascii_field(main, "QQOV", "OK")  # overall quality; "NOK" makes the reader warn

    sec = hdr["15_SECONDARY_PRODUCT_HEADER"]
    hrv = 3  # HRV pixels per VIS/IR pixel in both directions (the reader halves a full disk's)
    for key, value in {"SelectedBandIDs": SELECTED_BANDS,
                       "SouthLineSelectedRectangle": window.south, "NorthLineSelectedRectangle": window.north,
                       "EastColumnSelectedRectangle": window.east, "WestColumnSelectedRectangle": window.west,
                       "NumberLinesVISIR": grid.nrows, "NumberColumnsVISIR": grid.ncols,
                       "NumberLinesHRV": hrv * grid.nrows, "NumberColumnsHRV": hrv * grid.ncols}.items():
        _ascii_field(sec, key, value)

    data = hdr["15_DATA_HEADER"]
    _fill_satellite_status(data["SatelliteStatus"], grid, times, plat)
    _fill_acquisition(data["ImageAcquisition"], times)
    _fill_image_description(data["ImageDescription"], grid)
    cal = data["RadiometricProcessing"]["Level15ImageCalibration"]
    for k, name in enumerate(VISIR_CHANNELS):
        gain_offset = encoded[name][1] if name in encoded else LinearCalibration(1.0, 0.0)
        cal["CalSlope"][0, k], cal["CalOffset"][0, k] = gain_offset.gain, gain_offset.offset
    # GSICS coefficients stay 0, which the reader takes as "not available"
    earth = data["GeometricProcessing"]["EarthModel"]
    earth["TypeOfEarthModel"] = 1  # no half-pixel offset: the symmetric extent of GeosGrid
    earth["EquatorialRadius"] = grid.a / 1000.0  # km
    earth["NorthPolarRadius"] = earth["SouthPolarRadius"] = grid.b / 1000.0
    return hdr


def _fill_satellite_status(status, grid: GeosGrid, times: ScanTimes, plat: Platform) -> None:
    status["SatelliteDefinition"]["SatelliteId"] = plat.satellite_id
    status["SatelliteDefinition"]["NominalLongitude"] = grid.sub_lon
    orbit = status["Orbit"]
    windows = orbit_polynomial_windows(times)
    _set_cds(orbit["PeriodStartTime"], windows[0][0])
    _set_cds(orbit["PeriodEndTime"], windows[-1][1])
    x, y, z = orbit_polynomial_coefs(grid)
    for i, (t0, t1) in enumerate(windows):  # unused entries keep zero (1958) validity times
        poly = orbit["OrbitPolynomial"][0, i:i + 1]  # a view, so the fields below land in hdr
        _set_cds(poly["StartTime"], t0)
        _set_cds(poly["EndTime"], t1)
        poly["X"], poly["Y"], poly["Z"] = x, y, z


def _fill_acquisition(acq, times: ScanTimes) -> None:
    planned = acq["PlannedAcquisitionTime"]
    _set_cds(planned["TrueRepeatCycleStart"], times.repeat_cycle_start)
    _set_cds(planned["PlanForwardScanEnd"], times.scan_end)
    _set_cds(planned["PlannedRepeatCycleEnd"], times.slot_end)


def _fill_image_description(desc, grid: GeosGrid) -> None:
    desc["ProjectionDescription"]["TypeOfProjection"] = 1  # geostationary
    desc["ProjectionDescription"]["LongitudeOfSSP"] = grid.sub_lon
    for key, factor in (("ReferenceGridVIS_IR", 1), ("ReferenceGridHRV", 3)):
        ref = desc[key]
        ref["NumberOfLines"] = grid.full_rows * factor
        ref["NumberOfColumns"] = grid.full_cols * factor
        ref["LineDirGridStep"] = ref["ColumnDirGridStep"] = grid.step / factor / 1000.0  # km
        ref["GridOrigin"] = 2  # south-east corner, the only origin the reader supports
    planned = desc["PlannedCoverageVIS_IR"]
    planned["SouthernLinePlanned"], planned["NorthernLinePlanned"] = 1, grid.full_rows
    planned["EasternColumnPlanned"], planned["WesternColumnPlanned"] = 1, grid.full_cols
    desc["Level15ImageProduction"]["PlannedChanProcessing"] = RADIANCE_TYPE


# ----------------------------------------------------------------------------- trailer

def _trailer(window: SeviriWindow, times: ScanTimes, plat: Platform) -> np.ndarray:
    trailer = np.zeros(1, native_trailer)
    stats = trailer["15TRAILER"]["ImageProductionStats"]
    stats["SatelliteId"] = plat.satellite_id
    scan = stats["ActualScanningSummary"]
    scan["NominalImageScanning"] = 0 if times.rapid_scan else 1
    scan["ReducedScan"] = 1 if times.rapid_scan else 0  # the reader's 5- vs 15-minute slot switch
    _set_cds(scan["ForwardScanStart"], times.scan_start)
    _set_cds(scan["ForwardScanEnd"], times.scan_end)
    cover = stats["ActualL15CoverageVIS_IR"]
    cover["SouthernLineActual"], cover["NorthernLineActual"] = window.south, window.north
    cover["EasternColumnActual"], cover["WesternColumnActual"] = window.east, window.west
    return trailer

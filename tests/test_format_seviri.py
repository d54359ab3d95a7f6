"""SEVIRI L1.5 writers (NetCDF and native) read back by satpy's own readers.

Tolerances: the writers fit a 10-bit gain/offset to each field, so the round-trip error is half a
count; for the smooth test fields (a few kelvin / percent across a window) that is ~0.002 K / %,
well inside the asserted 0.05 K / 0.05 %.
"""
from __future__ import annotations

import datetime as dt
import time

import numpy as np
import pytest
import xarray as xr
from satpy import Scene
from satpy.readers.core.seviri import CALIB, SEVIRICalibrationAlgorithm, dec10216

from cloudsr_hpc.data.geometry import SEVIRI_FULL_DISK
from cloudsr_hpc.data.synthetic.formats.seviri_calib import (
    COUNT_MAX,
    SOLAR_CHANNELS,
    VISIR_CHANNELS,
    ScanTimes,
    encode,
    platform,
)
from cloudsr_hpc.data.synthetic.formats.seviri_native import pack10, write_seviri_native
from cloudsr_hpc.data.synthetic.formats.seviri_nc import write_seviri_nc

SLOT = dt.datetime(2024, 6, 1, 12, 0)
TOL = {"brightness_temperature": 0.05, "reflectance": 0.05}  # K, %
WRITERS = {"seviri_l1b_nc": write_seviri_nc, "seviri_l1b_native": write_seviri_native}
WINDOWS = {
    "east_limb": SEVIRI_FULL_DISK.window(1800, 3580, 64, 96),  # ~10 columns beyond the limb
    "centre": SEVIRI_FULL_DISK.window(1830, 1808, 64, 96),  # straddles the sub-satellite point
}
BAD_PIXEL = (5, 7)  # an on-disk pixel set to NaN in every field


def quantity(channel: str) -> str:
    return "reflectance" if channel in SOLAR_CHANNELS else "brightness_temperature"


def smooth_fields(grid, channels=VISIR_CHANNELS) -> dict[str, np.ndarray]:
    """Known smooth functions of the projection coordinates, NaN off the disk and at BAD_PIXEL."""
    xx, yy = np.meshgrid(grid.x, grid.y)
    off_disk = np.isnan(grid.lonlat()[0])
    fields = {}
    for k, name in enumerate(channels):
        if quantity(name) == "reflectance":
            v = 30.0 + 5 * k + xx * 2e-6 - yy * 1e-6
        else:
            v = 220.0 + 5 * k + xx * 1e-5 + yy * 3e-6
        v = np.where(off_disk, np.nan, v).astype(np.float32)
        v[BAD_PIXEL] = np.nan
        fields[name] = v
    return fields


def canonical(arr: xr.DataArray) -> tuple[np.ndarray, tuple[float, ...]]:
    """satpy array and extent -> row 0 north, column 0 west, extent (west, south, east, north).

    pyresample puts row 0 at extent[3] and column 0 at extent[0]."""
    x0, y0, x1, y1 = (float(v) for v in arr.attrs["area"].area_extent)
    data = arr.values
    if x0 > x1:
        data, x0, x1 = data[:, ::-1], x1, x0
    if y0 > y1:
        data, y0, y1 = data[::-1], y1, y0
    return data, (x0, y0, x1, y1)


def load(reader: str, paths, channels) -> Scene:
    scn = Scene(reader=reader, filenames=[str(p) for p in paths])
    for name in channels:
        scn.load([name], calibration=quantity(name))
    return scn


# ----------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("reader", WRITERS)
def test_round_trip(tmp_path, reader, window):
    grid = WINDOWS[window]
    fields = smooth_fields(grid)
    paths = WRITERS[reader](tmp_path, grid, fields, SLOT)
    assert len(paths) == 1 and paths[0].exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left

    scn = load(reader, paths, VISIR_CHANNELS)
    assert scn.start_time == SLOT
    assert scn.end_time == SLOT + dt.timedelta(minutes=15)
    for name, expected in fields.items():
        got, extent = canonical(scn[name])
        assert got.shape == grid.shape
        np.testing.assert_allclose(extent, grid.extent, rtol=0, atol=1.0)
        assert np.array_equal(np.isnan(got), np.isnan(expected)), name
        err = np.nanmax(np.abs(got - expected))
        assert err <= TOL[quantity(name)], (name, err)
    if window == "east_limb":
        assert 4 * grid.nrows < np.isnan(fields["IR_108"]).sum() < grid.nrows * grid.ncols // 2  # limb inside


@pytest.mark.parametrize("reader", WRITERS)
def test_missing_channels_are_fill(tmp_path, reader):
    grid = WINDOWS["centre"]
    paths = WRITERS[reader](tmp_path, grid, smooth_fields(grid, ["IR_108"]), SLOT)
    scn = load(reader, paths, ["IR_108", "VIS008", "WV_073"])
    assert np.isfinite(scn["IR_108"].values).sum() == grid.nrows * grid.ncols - 1
    assert np.isnan(scn["VIS008"].values).all() and np.isnan(scn["WV_073"].values).all()


@pytest.mark.parametrize("reader", WRITERS)
def test_rapid_scan_slot(tmp_path, reader):
    grid = WINDOWS["centre"]
    slot = SLOT + dt.timedelta(minutes=5)
    paths = WRITERS[reader](tmp_path, grid, smooth_fields(grid, ["IR_108"]), slot,
                            slot + dt.timedelta(minutes=5), platform="Meteosat-10")
    scn = load(reader, paths, ["IR_108"])
    assert (scn.start_time, scn.end_time) == (slot, slot + dt.timedelta(minutes=5))
    assert scn["IR_108"].attrs["platform_name"] == "Meteosat-10"
    got, _ = canonical(scn["IR_108"])
    assert np.nanmax(np.abs(got - smooth_fields(grid, ["IR_108"])["IR_108"])) <= TOL["brightness_temperature"]


def test_file_names(tmp_path):
    grid = WINDOWS["centre"]
    nc = write_seviri_nc(tmp_path, grid, {}, SLOT)[0].name
    nat = write_seviri_native(tmp_path, grid, {}, SLOT)[0].name
    assert nc == "W_XX-EUMETSAT-Darmstadt,VIS+IR+HRV+IMAGERY,MSG4+SEVIRI_C_EUMG_20240601120009.nc"
    assert nat == "MSG4-SEVI-MSG15-0100-NA-20240601121242.000000000Z-NA.nat"


def test_bad_inputs(tmp_path):
    grid = WINDOWS["centre"]
    with pytest.raises(ValueError, match="multiple of 4"):
        write_seviri_native(tmp_path, SEVIRI_FULL_DISK.window(0, 0, 8, 10), {}, SLOT)
    with pytest.raises(ValueError, match="not the start"):
        write_seviri_nc(tmp_path, grid, {}, SLOT + dt.timedelta(minutes=7))
    with pytest.raises(ValueError, match="shape"):
        write_seviri_nc(tmp_path, grid, {"IR_108": np.zeros((3, 3), np.float32)}, SLOT)
    with pytest.raises(ValueError, match="channel"):
        write_seviri_nc(tmp_path, grid, {"HRV": np.zeros(grid.shape, np.float32)}, SLOT)
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- calibration

def test_pack10_inverts_satpy_decoder():
    counts = np.random.default_rng(0).integers(0, COUNT_MAX + 1, (3, 16)).astype(np.uint16)
    assert np.array_equal(dec10216(pack10(counts).ravel()).reshape(counts.shape), counts)


@pytest.mark.parametrize("radiance_type", [1, 2])
@pytest.mark.parametrize("channel", VISIR_CHANNELS)
def test_calibration_inverts_satpy_over_full_range(channel, radiance_type):
    """Over realistic ranges the error is at most half a count, measured with satpy's algorithm."""
    sat_id = platform("Meteosat-11").satellite_id
    scan_time = ScanTimes.for_slot(SLOT).scan_start
    lo, hi = (0.5, 110.0) if channel in SOLAR_CHANNELS else (185.0, 330.0)
    values = np.linspace(lo, hi, 5000)
    counts, cal = encode(values, channel, sat_id, scan_time, radiance_type)
    assert counts.min() == 1 and counts.max() == COUNT_MAX

    algo = SEVIRICalibrationAlgorithm(sat_id, scan_time)

    def satpy_physical(c):
        rad = xr.DataArray(np.asarray(c, np.float32) * np.float32(cal.gain) + np.float32(cal.offset))
        if channel in SOLAR_CHANNELS:
            return algo.vis_calibrate(rad, CALIB[sat_id][channel]["F"]).values
        return algo.ir_calibrate(rad, channel, radiance_type).values

    got = satpy_physical(counts)
    # the wider side of the count's bin (count 1 holds the minimum exactly; BT is far from linear)
    half_count = np.maximum(np.abs(satpy_physical(counts + 0.5) - got),
                            np.abs(got - satpy_physical(np.maximum(counts - 0.5, 1))))
    assert np.all(np.abs(got - values) <= half_count + 1e-3)


# ----------------------------------------------------------------------------- full disk

@pytest.mark.slow
@pytest.mark.parametrize("reader", WRITERS)
def test_full_disk(tmp_path, reader):
    grid = SEVIRI_FULL_DISK
    fields = smooth_fields(grid, ["VIS006", "IR_108"])
    t0 = time.perf_counter()
    paths = WRITERS[reader](tmp_path, grid, fields, SLOT)
    elapsed = time.perf_counter() - t0
    print(f"\n{reader}: full disk, 2 channels written in {elapsed:.2f} s "
          f"({paths[0].stat().st_size / 2**20:.0f} MiB)")

    scn = load(reader, paths, ["IR_108"])
    got, extent = canonical(scn["IR_108"])
    assert got.shape == (3712, 3712)
    np.testing.assert_allclose(extent, grid.extent, rtol=0, atol=1.0)
    expected = fields["IR_108"]
    assert np.array_equal(np.isnan(got), np.isnan(expected))
    assert np.nanmax(np.abs(got - expected)) <= 0.25  # 10 bits over a ~110 K range

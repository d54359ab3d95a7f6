"""MTG FCI L1c FDHSI / HRFI body-chunk writer, read back by satpy's own ``fci_l1c_nc`` reader.

Tolerances: the writer uses a fixed 12-bit calibration per channel (as real files do), so the
round-trip error is half a count: for vis_06 0.0159 % x d^2 (0.0163 % in June), for ir_105
0.023 K at 250 K and 0.031 K at 230 K.  The round trips assert 0.02 % and 0.035 K; the
calibration test asserts, per value, half a count converted to physical units (+1e-3 for satpy's
float32 arithmetic).  Geometry is asserted to 1 m (it agrees to ~1e-8 m).

satpy reads every chunk through one shared netCDF4 handle, which is not safe under dask's threaded
scheduler (pytroll/satpy#3043: "NetCDF: HDF error" / segfaults on real files too), so these tests
compute synchronously.
"""
from __future__ import annotations

import datetime as dt
import time

import dask
import numpy as np
import pytest
from pyorbital.astronomy import sun_earth_distance_correction
from satpy import Scene
from satpy.area import get_area_def
from satpy.readers.core.grouping import find_files_and_readers

from cloudsr_hpc.data.geometry import lonlat_to_geos
from cloudsr_hpc.data.synthetic.formats.fci import (
    COUNT_MAX,
    FCI_CHANNELS,
    FULL_DISK_PIXELS,
    N_CHUNKS,
    PLANCK_C1,
    PLANCK_C2,
    PRODUCTS,
    chunk_rows,
    fci_full_disk,
    fci_window,
    write_fci_l1c,
)

SLOT = dt.datetime(2024, 6, 1, 12, 0)
TOL = {"reflectance": 0.02, "brightness_temperature": 0.035}  # %, K
TEST_CHANNELS = {"FDHSI": {"vis_06": 1000, "ir_105": 2000}, "HRFI": {"vis_06": 500, "ir_105": 1000}}
BAD_PIXEL = (5, 7)  # an on-disk pixel (of the 1 km window) set to NaN in every field
DISK_1KM = fci_full_disk(1000)


def _europe_window():
    """128 x 160 px at 1 km around 10 E 48 N, moved so that a chunk boundary runs through it."""
    x, y = lonlat_to_geos(np.array([10.0]), np.array([48.0]), DISK_1KM)
    col = int(x[0] / DISK_1KM.step + DISK_1KM.full_cols / 2)
    row = int(DISK_1KM.full_rows / 2 - y[0] / DISK_1KM.step)
    file_row = DISK_1KM.full_rows - row
    boundary = next(e for _, e in chunk_rows(1000) if e >= file_row)  # last file row of that chunk
    row0 = DISK_1KM.full_rows - boundary - 60  # 60 rows of that chunk, 68 of the next one north
    return DISK_1KM.window(row0, col - col % 2 - 80, 128, 160)


WINDOWS = {
    "europe": _europe_window(),
    "east_limb": DISK_1KM.window(5480, 10930, 128, 160),  # equator; the limb is ~75 columns in
}


def quantity(channel: str) -> str:
    return FCI_CHANNELS[channel].quantity


def smooth_field(grid, channel: str) -> np.ndarray:
    """A known smooth function of the projection coordinates; NaN off the disk and at BAD_PIXEL."""
    xx, yy = np.meshgrid(grid.x, grid.y)
    if quantity(channel) == "reflectance":
        v = 40.0 + xx * 2e-6 - yy * 1e-6
    else:
        v = 250.0 + xx * 1e-5 + yy * 3e-6
    v = np.where(np.isnan(grid.lonlat()[0]), np.nan, v).astype(np.float32)
    factor = grid.full_rows // DISK_1KM.full_rows  # 2 at 500 m: mark the pixels under BAD_PIXEL
    if factor:
        v[BAD_PIXEL[0] * factor:(BAD_PIXEL[0] + 1) * factor,
          BAD_PIXEL[1] * factor:(BAD_PIXEL[1] + 1) * factor] = np.nan
    else:
        v[BAD_PIXEL[0] // 2, BAD_PIXEL[1] // 2] = np.nan
    return v


@pytest.fixture(autouse=True)
def synchronous_dask():
    with dask.config.set(scheduler="synchronous"):
        yield


def load(paths, channels) -> Scene:
    """North-up, west-left, as the package's canonical orientation."""
    scn = Scene(reader="fci_l1c_nc", filenames=[str(p) for p in paths])
    for name in channels:
        scn.load([name], calibration=quantity(name), upper_right_corner="NE")
    return scn


def crop(scn: Scene, name: str, grid) -> tuple[np.ndarray, tuple[float, ...]]:
    """satpy's full-disk channel cut to ``grid``: values and the extent of that part of its area."""
    arr = scn[name]
    assert arr.shape == (grid.full_rows, grid.full_cols)
    rows, cols = slice(grid.row0, grid.row0 + grid.nrows), slice(grid.col0, grid.col0 + grid.ncols)
    x0, y0, x1, y1 = arr.attrs["area"][rows, cols].area_extent
    assert x0 < x1 and y0 < y1  # west -> east and north -> south, as asked for
    return arr.data[rows, cols].compute(), (x0, y0, x1, y1)


# ----------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("product", TEST_CHANNELS)
def test_round_trip(tmp_path, product, window):
    grids = {name: fci_window(WINDOWS[window], res) for name, res in TEST_CHANNELS[product].items()}
    fields = {name: (grid, smooth_field(grid, name)) for name, grid in grids.items()}

    t0 = time.perf_counter()
    paths = write_fci_l1c(tmp_path, product, fields, SLOT)
    t_write = time.perf_counter() - t0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
    # satpy finds the files by their names alone
    found = find_files_and_readers(base_dir=str(tmp_path), reader="fci_l1c_nc")["fci_l1c_nc"]
    assert sorted(found) == sorted(map(str, paths))
    if window == "europe":
        assert len(paths) == 2  # the window straddles a chunk boundary

    t0 = time.perf_counter()
    scn = load(paths, fields)
    assert scn.start_time == SLOT  # (d)
    assert scn.end_time == SLOT + dt.timedelta(minutes=10)
    for name, (grid, expected) in fields.items():
        got, extent = crop(scn, name, grid)
        np.testing.assert_allclose(extent, grid.extent, rtol=0, atol=1.0)  # (b)
        assert np.array_equal(np.isnan(got), np.isnan(expected)), name  # (c)
        err = np.nanmax(np.abs(got - expected))
        assert err <= TOL[quantity(name)], (name, err)  # (a)
        print(f"\n{product} {window} {name}: {grid.shape} px, max error {err:.4f}")
    print(f"{product} {window}: {len(paths)} chunk(s), {sum(p.stat().st_size for p in paths) / 1e6:.2f} MB, "
          f"written in {t_write:.2f} s, read back in {time.perf_counter() - t0:.2f} s")
    if window == "east_limb":
        nan = np.isnan(fields["ir_105"][1])
        assert 0.2 < nan.mean() < 0.8  # the limb runs through the window


def test_channels_not_given_are_fill(tmp_path):
    grid = fci_window(WINDOWS["europe"], 2000)
    paths = write_fci_l1c(tmp_path, "FDHSI", {"ir_105": (grid, smooth_field(grid, "ir_105"))}, SLOT)
    scn = load(paths, ["ir_105", "wv_63", "vis_08"])
    assert np.isfinite(crop(scn, "ir_105", grid)[0]).sum() == grid.nrows * grid.ncols - 1
    assert np.isnan(crop(scn, "wv_63", grid)[0]).all()
    assert np.isnan(crop(scn, "vis_08", fci_window(grid, 1000))[0]).all()


def test_every_channel_over_its_range(tmp_path):
    """Ramps over each channel's whole range, ir_38's warm (fire) counts included: every value comes
    back inside the physical image of its count's radiance bin."""
    base = fci_full_disk(2000).window(2700, 2700, 16, 64)  # on the disk, near the sub-satellite point
    ranges = {"reflectance": (0.0, 125.0), "brightness_temperature": (200.0, 330.0)}
    fields = {}
    for name, res in PRODUCTS["FDHSI"].items():
        grid = fci_window(base, res)
        lo, hi = {"ir_38": (200.0, 480.0), "wv_63": (200.0, 305.0), "wv_73": (200.0, 305.0)}.get(
            name, ranges[quantity(name)])  # inside each channel's counts (wv_* saturate at 310 K)
        fields[name] = (grid,
                        np.linspace(lo, hi, grid.nrows * grid.ncols, dtype=np.float32).reshape(grid.shape))

    paths = write_fci_l1c(tmp_path, "FDHSI", fields, SLOT)
    scn = load(paths, fields)
    sun_earth_au = sun_earth_distance_correction(SLOT)  # within 1e-7 of the files' mean
    for name, (grid, expected) in fields.items():
        got, _ = crop(scn, name, grid)
        ch = FCI_CHANNELS[name]
        v = expected.astype(np.float64)
        rad = ch.to_radiance(v, sun_earth_au)
        beyond_normal = rad > ch.add_offset + COUNT_MAX * ch.scale_factor  # ir_38's warm counts
        half = np.where(beyond_normal, ch.warm_scale_factor, ch.scale_factor) / 2
        lo = physical(ch, np.maximum(rad - half, 1e-9), sun_earth_au)
        hi = physical(ch, rad + half, sun_earth_au)
        slack = 1e-3  # satpy calibrates in float32
        assert np.all((got >= lo - slack) & (got <= hi + slack)), name
        if name == "ir_38":
            assert beyond_normal.any() and (~beyond_normal).any()


def physical(ch, radiance, sun_earth_au):
    """The PUG's radiance -> reflectance / BT (what satpy applies), here only to bound the error."""
    if ch.solar:
        return 100 * np.pi * radiance * sun_earth_au ** 2 / ch.solar_irradiance
    return (PLANCK_C2 * ch.wavenumber / np.log1p(PLANCK_C1 * ch.wavenumber ** 3 / radiance) - ch.b) / ch.a


# ----------------------------------------------------------------------------- grids and chunks

@pytest.mark.parametrize(("res", "area_id"), [(500, "mtg_fci_fdss_500m"), (1000, "mtg_fci_fdss_1km"),
                                              (2000, "mtg_fci_fdss_2km")])
def test_full_disk_matches_satpy_area(res, area_id):
    area = get_area_def(area_id)
    grid = fci_full_disk(res)
    assert grid.shape == area.shape == (FULL_DISK_PIXELS[res],) * 2
    np.testing.assert_allclose(grid.extent, area.area_extent, rtol=0, atol=1e-6)
    assert grid.area_definition().crs == area.crs
    assert abs(grid.step - res) < 1e-5  # the files' scan-angle step is a hair short of the nominal size


def test_chunk_layout():
    for res, n in FULL_DISK_PIXELS.items():
        rows = chunk_rows(res)
        assert len(rows) == N_CHUNKS and rows[0][0] == 1 and rows[-1][1] == n
        assert all(prev[1] + 1 == nxt[0] for prev, nxt in zip(rows, rows[1:], strict=False))
    factor = {500: 4, 1000: 2, 2000: 1}
    for res in factor:  # a chunk covers the same lines at every resolution
        assert chunk_rows(res) == [((s - 1) * factor[res] + 1, e * factor[res]) for s, e in chunk_rows(2000)]


def test_fci_window():
    w = DISK_1KM.window(100, 200, 64, 96)
    assert fci_window(w, 2000) == fci_full_disk(2000).window(50, 100, 32, 48)
    assert fci_window(w, 500) == fci_full_disk(500).window(200, 400, 128, 192)
    np.testing.assert_allclose(fci_window(w, 500).extent, w.extent, atol=0.01)
    with pytest.raises(ValueError, match="pixel edges"):
        fci_window(DISK_1KM.window(101, 200, 64, 96), 2000)


def test_bad_inputs(tmp_path):
    g1 = WINDOWS["europe"]
    g2 = fci_window(g1, 2000)
    ok = smooth_field(g2, "ir_105")
    with pytest.raises(ValueError, match="not in FCI HRFI"):
        write_fci_l1c(tmp_path, "HRFI", {"ir_87": (g1, np.zeros(g1.shape, np.float32))}, SLOT)
    with pytest.raises(ValueError, match="at 2000 m"):
        write_fci_l1c(tmp_path, "FDHSI", {"ir_105": (g1, np.zeros(g1.shape, np.float32))}, SLOT)
    with pytest.raises(ValueError, match="shape"):
        write_fci_l1c(tmp_path, "FDHSI", {"ir_105": (g2, ok[1:])}, SLOT)
    with pytest.raises(ValueError, match="product"):
        write_fci_l1c(tmp_path, "AF", {"ir_105": (g2, ok)}, SLOT)
    with pytest.raises(ValueError, match="platform"):
        write_fci_l1c(tmp_path, "FDHSI", {"ir_105": (g2, ok)}, SLOT, platform="Meteosat-11")
    assert not list(tmp_path.iterdir())

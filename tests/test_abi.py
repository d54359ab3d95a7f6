"""GOES ABI on real L1b files: names and slots, the fixed grid with sweep x, night masking, the
canonical scene, and bad input.  The files are operational NOAA files kept beside the repository
(``../shared/data/abi-real``, see its README): one GOES-17 CONUS day scene, one GOES-16 mesoscale
night scene."""
import dataclasses
import datetime as dt
import shutil
import warnings
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import xarray as xr

from cloudsr_hpc.data.geometry import GeosGrid
from cloudsr_hpc.data.index import ArchiveIndex, formats_of, identify, parsers
from cloudsr_hpc.data.readers import _grid_from_area, mask_night, read_files
from cloudsr_hpc.data.scene import read_scene, scene_grid
from cloudsr_hpc.data.sensors import SensorPair, load_registry
from cloudsr_hpc.errors import ConfigError, InputError

DATA = Path(__file__).resolve().parents[1].parent / "shared/data/abi-real"
REG = load_registry()
ABI = REG.sensor("abi")
CONUS = ["C04", "C06", "C08", "C09", "C10", "C16"]
START_CONUS = dt.datetime(2019, 10, 27, 20, 1, 19, 600000)
START_MESO = dt.datetime(2020, 1, 1, 0, 1, 26, 200000)


def _files(pattern: str) -> list[Path]:
    found = sorted(DATA.glob(pattern))
    assert found, f"{DATA}/{pattern}: the real ABI files are missing (see the README there)"
    return found


def _haversine_m(lon1, lat1, lon2, lat2):
    l1, p1, l2, p2 = map(np.radians, (lon1, lat1, lon2, lat2))
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin((l2 - l1) / 2) ** 2
    return 2 * 6371000.0 * np.arcsin(np.sqrt(a))


def _sza(grid: GeosGrid, when: dt.datetime) -> np.ndarray:
    from pyorbital.astronomy import sun_zenith_angle
    lon, lat = grid.lonlat()
    return sun_zenith_angle(when, lon, lat)


@pytest.fixture(scope="module")
def satpy_ref():
    """satpy's own reading (area and reflectance) of one CONUS band and of the mesoscale band."""
    from satpy import Scene
    out = {}
    for key, pattern, ch in (("conus", "*RadC-M6C04_*.nc", "C04"), ("meso", "*RadM1-M6C01_*.nc", "C01")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scn = Scene(reader="abi_l1b", filenames=[str(p) for p in _files(pattern)])
            scn.load([ch], calibration="reflectance")
            out[key] = (scn[ch].attrs["area"], scn[ch].values)
    return out


@pytest.fixture(scope="module")
def conus():
    return read_files(_files("*RadC-*.nc"), ABI, "radc")  # every channel the files hold


@pytest.fixture(scope="module")
def meso():
    return read_files(_files("*RadM1-*.nc"), ABI, "radm1", ["C01"])


# ----------------------------------------------------------------------------- registry, names, index
def test_registry_declares_abi_and_the_self_supervised_pair():
    assert list(ABI.channels) == [f"C{i:02d}" for i in range(1, 17)]
    assert ABI.channel("C02").resolution_m == 500 and ABI.channel("C05").resolution_m == 1000
    assert ABI.channel("C13").wavelength_um == pytest.approx(10.35)
    assert {ABI.channel(f"C{i:02d}").quantity for i in range(1, 7)} == {"reflectance"}
    assert {ABI.channel(f"C{i:02d}").quantity for i in range(7, 17)} == {"brightness_temperature"}
    assert [ABI.formats[f].repeat_cycle_minutes for f in ("radf", "radc", "radm1", "radm2")] == [10, 5, 1, 1]
    assert ABI.night_zenith_deg == 85.0 and REG.sensor("seviri").night_zenith_deg == 85.0  # the default
    pair = REG.pair("abi_abi")
    assert pair.self_supervised and not REG.pair("seviri_viirs").self_supervised
    assert pair.lr_channels == pair.hr_channels == CONUS and pair.scale == 4
    with pytest.raises(ConfigError, match="maps every channel onto itself"):
        SensorPair("abi", "abi", [("C04", "C06")], ["radc"], ["radc"]).validate("pairs.bad")


def test_abi_names_parse_to_tenths_of_a_second_and_sector_slots():
    plist = parsers(REG)
    conus = _files("*RadC-M6C04_*.nc")[0].name
    meso = _files("*RadM1-*.nc")[0].name
    radc = next(parser for _, fmt, parser, _ in plist if fmt == "radc")
    assert radc.parse(conus)["start_time"] == START_CONUS  # one fractional digit: tenths
    sensor, fmt, slot = identify(conus, plist)
    assert (sensor.name, fmt, slot) == ("abi", "radc", dt.datetime(2019, 10, 27, 20, 0))  # 5-min cycle
    assert identify(meso, plist)[1:] == ("radm1", dt.datetime(2020, 1, 1, 0, 1))  # 1-min cycle
    full = "OR_ABI-L1b-RadF-M6C13_G18_s20231821406217_e20231821415531_c20231821415599.nc"
    assert identify(full, plist)[1:] == ("radf", dt.datetime(2023, 7, 1, 14, 10))  # 10-min cycle


def test_index_finds_the_real_scenes_with_the_sector_tolerance():
    idx = ArchiveIndex(DATA, REG)
    scene = idx.find("abi", ["radc"], dt.datetime(2019, 10, 27, 20, 2))
    assert scene.time == dt.datetime(2019, 10, 27, 20, 0) and len(scene.files) == 6
    with pytest.raises(Exception, match="within 0:02:30"):  # half the 5-min CONUS cycle, not the sensor's 10
        idx.find("abi", ["radc"], dt.datetime(2019, 10, 27, 20, 3))
    assert idx.find("abi", ["radm1"], dt.datetime(2020, 1, 1, 0, 1, 20)).files[0].name.startswith(
        "OR_ABI-L1b-RadM1")


def test_formats_come_from_the_file_names():
    meso, conus = _files("*RadM1-*.nc"), _files("*RadC-*.nc")
    assert formats_of(meso + conus, ABI, REG) == ["radc", "radm1"]
    assert formats_of(["renamed.nc"], ABI, REG) == []  # unknown names: the caller's default
    with pytest.raises(InputError, match="file name of sensor abi"):
        formats_of(meso, REG.sensor("seviri"), REG)


def test_grid_sweep_travels_through_attrs_and_cf():
    g = GeosGrid(sub_lon=-137.0, step=2004.017288, full_rows=5558, full_cols=5558, row0=489, col0=1529,
                 nrows=15, ncols=25, h=35786023.0, a=6378137.0, b=6356752.31414, sweep="x")
    assert GeosGrid.from_attrs(g.to_attrs()) == g and g.scaled(4).sweep == g.window(1, 1, 2, 2).sweep == "x"
    old = {k: v for k, v in g.to_attrs().items() if k != "grid_sweep"}  # a file from before the field
    assert GeosGrid.from_attrs(old).sweep == "y"
    cf = g.cf_grid_mapping()
    assert cf["grid_mapping_name"] == "geostationary" and cf["sweep_angle_axis"] == "x"
    assert cf["perspective_point_height"] == 35786023.0 and "crs_wkt" in cf and None not in cf.values()
    assert g.area_definition().crs.to_cf()["sweep_angle_axis"] == "x"
    with pytest.raises(ValueError, match="sweep"):
        dataclasses.replace(g, sweep="z")


# ----------------------------------------------------------------------------- reading, geometry
def test_reader_on_the_real_conus_files(conus):
    assert [c for c in conus.data_vars if conus[c].dims == ("y", "x")] == CONUS
    assert conus.attrs["platform"] == "GOES-17" and conus.attrs["sensor"] == "abi"
    assert conus.attrs["start_time"] == START_CONUS.isoformat()
    for c in CONUS:
        v = conus[c].values
        assert v.shape == (1500, 2500) and v.dtype == np.float32 and np.isfinite(v).all()
        lo, hi = ABI.channel(c).norm
        if c in ("C04", "C06"):
            assert conus[c].attrs["units"] == "%" and -2 < v.min() and 30 < v.max() < 100
        else:  # inside the normalisation range, with margin: the networks see [-1, 1]
            assert conus[c].attrs["units"] == "K" and lo + 5 < v.min() and v.max() < hi - 5
    # README: 199-288 K
    assert 199 < conus["C16"].values.min() < 200 and 287 < conus["C16"].values.max() < 289
    g = scene_grid(conus)
    assert (g.sweep == "x" and g.sub_lon == -137.0 and g.shape == (1500, 2500)
            and g.step == pytest.approx(2004.017288))
    assert conus["geostationary"].attrs["sweep_angle_axis"] == "x"


@pytest.mark.parametrize("key", [pytest.param("conus", marks=pytest.mark.slow), "meso"])
def test_canonical_lonlat_is_satpys_and_sweep_y_would_not_be(satpy_ref, key):
    area, _ = satpy_ref[key]
    grid = _grid_from_area(area, ABI)
    assert grid.sweep == "x"
    lon, lat = grid.lonlat()
    slon, slat = area.get_lonlats()
    assert np.isfinite(lon).all() and np.isfinite(slon).all()
    assert np.max(_haversine_m(lon, lat, slon, slat)) < 100.0
    ylon, ylat = dataclasses.replace(grid, sweep="y").lonlat()
    assert np.nanmax(_haversine_m(ylon, ylat, slon, slat)) > 1000.0  # the axis matters: the test can fail


def test_full_disk_areas_align_in_the_generic_envelope(satpy_ref):
    """ABI's full disk (5424 px at 2 km, 21696 at 500 m) sits in the same symmetric envelope as any
    window of it: the 2 km and 500 m grids nest, and pixel centres are satpy's."""
    from pyresample.geometry import AreaDefinition
    crs = satpy_ref["conus"][0].crs
    half = 5424 * 2004.017288 / 2
    grids = {}
    for n in (5424, 21696):
        area = AreaDefinition("abi_fd", "abi_fd", "abi_fd", crs, n, n, (-half, -half, half, half))
        grids[n] = _grid_from_area(area, ABI)
        x, _ = area.get_proj_vectors()
        np.testing.assert_allclose(grids[n].x, x, atol=1e-3)
    assert grids[5424].scaled(4).extent == pytest.approx(grids[21696].extent)
    assert grids[5424].col0 * 4 == grids[21696].col0 and grids[21696].sweep == "x"


# ----------------------------------------------------------------------------- night
def test_night_mesoscale_reflectance_is_masked(meso, satpy_ref):
    raw = satpy_ref["meso"][1]
    assert np.isfinite(raw).all() and np.abs(raw).max() < 1.0  # the file has values: noise around 0
    night = _sza(scene_grid(meso), START_MESO) > ABI.night_zenith_deg
    c01 = meso["C01"].values
    assert np.array_equal(np.isnan(c01), night) and night.mean() == 1.0  # 00:01 UTC in January, 33-46 N
    assert meso.attrs["night_masked_channels"] == "C01"


def test_day_conus_reflectance_is_kept_and_a_lower_sun_limit_masks_exactly_its_pixels(
        conus, satpy_ref, monkeypatch):
    sza = _sza(scene_grid(conus), START_CONUS)
    assert sza.max() < ABI.night_zenith_deg and conus.attrs["night_masked_channels"] == ""
    np.testing.assert_array_equal(conus["C04"].values, satpy_ref["conus"][1])
    # 70 degrees: reached in the northern rows only (the scene's low-sun corner is 83.7 degrees), so
    # blocks of rows are both projected and skipped from their edges; the mask must be exact anyway
    limit = 70.0
    projected = []
    lonlat = GeosGrid.lonlat
    monkeypatch.setattr(GeosGrid, "lonlat", lambda g: projected.append(g.nrows) or lonlat(g))
    ds = conus[["C04", "C06", "C16"]].copy(deep=True)
    masked = mask_night(ds, dataclasses.replace(ABI, night_zenith_deg=limit), START_CONUS, scene_grid(conus))
    assert masked == ["C04", "C06"] and 0.0 < (sza > limit).mean() < 0.5
    assert 0 < sum(projected) < ds.sizes["y"]  # cheap: rows far from the limit were never projected
    for c in ("C04", "C06"):
        assert np.array_equal(np.isnan(ds[c].values), sza > limit)
        np.testing.assert_array_equal(ds[c].values[sza <= limit], conus[c].values[sza <= limit])
    assert np.isfinite(ds["C16"].values).all()  # brightness temperatures are never night-masked


# ----------------------------------------------------------------------------- the command line
@pytest.mark.slow
def test_submit_read_writes_a_cf_scene_with_sweep_x_that_round_trips(cli, conus, tmp_path):
    out = tmp_path / "scene.nc"
    proc = cli("read", *_files("*RadC-*.nc"), "--sensor", "abi", "--out", out)
    assert proc.returncode == 0, proc.stderr
    with xr.open_dataset(out) as ds:
        assert ds["geostationary"].attrs["sweep_angle_axis"] == "x" and ds.attrs["grid_sweep"] == "x"
        assert [c for c in ds.data_vars if ds[c].dims == ("y", "x")] == CONUS
    back = read_scene(out)
    assert scene_grid(back) == scene_grid(conus)
    np.testing.assert_array_equal(back["C10"].values, conus["C10"].values)
    from compliance_checker.suite import CheckSuite
    cs = CheckSuite()
    cs.load_all_available_checkers()
    results, errors = cs.run_all(cs.load_dataset(str(out)), ["cf:1.10"], [], [])["cf:1.10"]
    rep = cs.build_structure("cf:1.10", results, str(out), 2)
    issues = [f"{r.name}: {m}" for k in ("high_priorities", "medium_priorities")
              for r in rep[k] for m in r.msgs]
    assert not errors and not issues, issues


@pytest.mark.slow
def test_submit_read_infers_the_mesoscale_format_and_keeps_an_all_night_channel(cli, tmp_path):
    out = tmp_path / "meso.nc"
    # no --format: RadM1 from the name
    proc = cli("read", *_files("*RadM1-*.nc"), "--sensor", "abi", "--out", out)
    assert proc.returncode == 0, proc.stderr
    back = read_scene(out)  # an all-NaN channel is accepted when night masking emptied it
    assert back.attrs["night_masked_channels"] == "C01" and np.isnan(back["C01"].values).all()
    assert scene_grid(back).sweep == "x" and scene_grid(back).sub_lon == -75.0


def _copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)  # the originals are read-only; the copy is not
    return dst


def _other_time(tmp: Path) -> list[Path]:
    """C04 as it is, C08 under a name and a ``time_coverage_start`` an hour later (satpy reads the latter)."""
    c08 = _files("*RadC-M6C08_*.nc")[0]
    late = _copy(c08, tmp / c08.name.replace("_s20193002001196_", "_s20193002101196_"))
    with netCDF4.Dataset(late, "a") as nc:
        nc.time_coverage_start = nc.time_coverage_start.replace("T20:01", "T21:01")
    return [_files("*RadC-M6C04_*.nc")[0], late]


def _truncated(tmp: Path) -> list[Path]:
    src = _files("*RadC-M6C04_*.nc")[0]
    bad = tmp / src.name
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(src.read_bytes()[: src.stat().st_size // 3])
    return [bad]


def _all_fill(tmp: Path) -> list[Path]:
    bad = _copy(_files("*RadC-M6C04_*.nc")[0], tmp / "fill" / _files("*RadC-M6C04_*.nc")[0].name)
    with netCDF4.Dataset(bad, "a") as nc:
        rad = nc["Rad"]
        rad.set_auto_maskandscale(False)
        rad[:] = np.full(rad.shape, rad._FillValue, rad.dtype)
    return [bad]


BAD = {
    "sectors": (lambda tmp: _files("*RadM1-*.nc") + _files("*RadC-M6C04_*.nc"), [],
                "bands on different sectors"),
    "times": (_other_time, [], "bands from different times"),
    "missing band": (lambda tmp: _files("*RadC-M6C04_*.nc"), ["--channels", "C04", "C13"],
                     "C13 not readable"),
    "truncated": (_truncated, [], "abi reader failed"),
    "no valid pixel": (_all_fill, [], "channel C04 has no valid pixel"),
    # GOES-East's longitudes on a GOES-West (PACUS) scene: the extent named, across the antimeridian
    "box off the scene": (lambda tmp: _files("*RadC-M6C16_*.nc"), ["--bbox", "-80", "30", "-70", "40"],
                          "box -80 30 -70 40 does not overlap the scene (GOES-West: lon 175.6..-90.2"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD))
def test_bad_abi_input_is_one_line_naming_the_file_and_writes_nothing(cli, tmp_path, case):
    make, extra, needle = BAD[case]
    files = make(tmp_path / "in")
    out = tmp_path / "out" / "scene.nc"
    proc = cli("read", *files, "--sensor", "abi", "--out", out, *extra)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert needle in lines[0] and all(str(f) in lines[0] for f in files), lines[0]
    assert not out.exists() and not (out.parent.exists() and list(out.parent.iterdir()))


def test_a_south_up_area_is_refused_by_name():
    """Orientation is satpy's (``upper_right_corner="NE"``): an area that is still south-up means a
    reader ignored it, which is one clear error, never a silently flipped scene."""
    from pyresample.geometry import AreaDefinition

    from cloudsr_hpc.errors import InputError
    crs = "+proj=geos +h=35786023 +lon_0=-137 +sweep=x +ellps=GRS80"
    half = 100 * 2004.017288 / 2
    area = AreaDefinition("s", "s", "s", crs, 100, 100, (half, half, -half, -half))
    with pytest.raises(InputError, match="not north-up"):
        _grid_from_area(area, ABI, "scene.nc")

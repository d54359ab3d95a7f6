import datetime as dt

import numpy as np
import pytest
import xarray as xr

from cloudsr_hpc.data.geometry import SEVIRI_FULL_DISK
from cloudsr_hpc.data.index import ArchiveIndex, parse_date, parse_every
from cloudsr_hpc.data.scene import make_scene, read_scene, scene_grid, write_scene
from cloudsr_hpc.data.sensors import load_registry
from cloudsr_hpc.errors import ArchiveError, CloudSRError, InputError

REG = load_registry()


def _touch(root, rel):
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")
    return p


def test_index_finds_nearest_slot_and_groups_files(tmp_path):
    nc = _touch(tmp_path,
                "seviri/2024/06/01/W_XX-EUMETSAT-Darmstadt,VIS+IR+HRV+IMAGERY,MSG4+SEVIRI_C_EUMG_20240601120010.nc")
    _touch(tmp_path,
           "seviri/2024/06/01/W_XX-EUMETSAT-Darmstadt,VIS+IR+HRV+IMAGERY,MSG4+SEVIRI_C_EUMG_20240601121510.nc")
    nat = _touch(tmp_path, "nat/MSG4-SEVI-MSG15-0100-NA-20240601121242.123000000Z-NA.nat")
    obs = _touch(tmp_path, "viirs/VNP02IMG.A2024153.1204.002.2024153130000.nc")
    geo = _touch(tmp_path, "viirs/VNP03IMG.A2024153.1204.002.2024153130000.nc")
    _touch(tmp_path,
           "seviri/.W_XX-EUMETSAT-Darmstadt,VIS+IR+HRV+IMAGERY,MSG4+SEVIRI_C_EUMG_20240601123010.nc.part")
    _touch(tmp_path, "README.txt")
    idx = ArchiveIndex(tmp_path, REG)
    s = idx.find("seviri", ["nc"], parse_date("2024-06-01T12:05"))
    assert s.time == dt.datetime(2024, 6, 1, 12, 0) and s.files == [nc]
    assert idx.times("seviri", ["nc"]) == [dt.datetime(2024, 6, 1, 12, 0), dt.datetime(2024, 6, 1, 12, 15)]
    # .nat names carry the scan end: the 12:12:42 file is the 12:00 slot
    assert idx.find("seviri", ["native"], dt.datetime(2024, 6, 1, 12, 0)).files == [nat]
    v = idx.find("viirs", ["l1b"], dt.datetime(2024, 6, 1, 12, 4), dt.timedelta(minutes=1))
    assert v.files == sorted([obs, geo])


def test_fci_chunks_are_grouped_by_repeat_cycle_not_chunk_time(tmp_path):
    name = ("W_XX-EUMETSAT-Darmstadt,IMG+SAT,MTI1+FCI-1C-RRAD-FDHSI-FD--CHK-BODY--DIS-NC4E_"
            "C_EUMT_{p}_IDPFI_OPE_"
            "{s}_{e}_N__C_{rc}_{n}.nc")
    a = _touch(tmp_path,
               name.format(p="20240601120159", s="20240601120014", e="20240601120029", rc="0073", n="0001"))
    b = _touch(tmp_path,
               name.format(p="20240601121159", s="20240601120914", e="20240601120929", rc="0073", n="0040"))
    c = _touch(tmp_path,
               name.format(p="20240602000959", s="20240602000414", e="20240602000429", rc="0144", n="0040"))
    idx = ArchiveIndex(tmp_path, REG)
    assert idx.scene("fci", ["fdhsi"], dt.datetime(2024, 6, 1, 12, 0)).files == sorted([a, b])
    # the last cycle of 1 June (23:50) has chunks scanned after midnight
    assert idx.scene("fci", ["fdhsi"], dt.datetime(2024, 6, 1, 23, 50)).files == [c]


def test_index_says_when_nothing_is_within_tolerance(tmp_path):
    _touch(tmp_path, "W_XX-EUMETSAT-Darmstadt,VIS+IR+HRV+IMAGERY,MSG4+SEVIRI_C_EUMG_20240601120010.nc")
    idx = ArchiveIndex(tmp_path, REG)
    with pytest.raises(ArchiveError,
                       match=r"no seviri scene within 0:07:30 of 2024-06-02T12:00:00 \(nearest: "
                             r"2024-06-01T12:00:00\)"):
        idx.find("seviri", ["nc"], dt.datetime(2024, 6, 2, 12))
    with pytest.raises(ArchiveError, match="no viirs"):
        idx.find("viirs", ["l1b"], dt.datetime(2024, 6, 1, 12))
    with pytest.raises(ArchiveError, match="does not exist"):
        ArchiveIndex(tmp_path / "nope", REG)


def test_date_and_interval_parsing():
    assert parse_date("2024-06-01T12:00") == dt.datetime(2024, 6, 1, 12)
    assert parse_date("202406011215") == dt.datetime(2024, 6, 1, 12, 15)
    assert parse_every("15min") == dt.timedelta(minutes=15) and parse_every("1h") == dt.timedelta(hours=1)
    with pytest.raises(CloudSRError, match="unknown date format"):
        parse_date("June 1st")
    with pytest.raises(CloudSRError, match="expected e.g. 15min"):
        parse_every("often")


def _scene():
    g = SEVIRI_FULL_DISK.window(20, 1800, 80, 50)  # crosses the limb: some NaN
    rng = np.random.default_rng(0)
    lon, _ = g.lonlat()
    vals = {c: np.where(np.isfinite(lon), rng.uniform(200, 300, g.shape), np.nan).astype(np.float32)
            for c in ("IR_108", "VIS006")}
    return make_scene(vals, REG.sensor("seviri"), dt.datetime(2024, 6, 1, 12), grid=g,
                      platform="Meteosat-11"), g


def test_canonical_scene_round_trip_is_lossless(tmp_path):
    ds, g = _scene()
    p = write_scene(ds, tmp_path / "scene.nc")
    back = read_scene(p)
    for c in ("IR_108", "VIS006"):
        a, b = ds[c].values, back[c].values
        assert np.array_equal(np.isnan(a), np.isnan(b)) and np.array_equal(a[~np.isnan(a)], b[~np.isnan(b)])
        assert back[c].attrs["grid_mapping"] == "geostationary"
    assert scene_grid(back) == g
    assert back["geostationary"].attrs["grid_mapping_name"] == "geostationary"
    assert np.isnan(back["IR_108"].values).any()
    # h5netcdf (pure HDF5) reads the same file
    with xr.open_dataset(p, engine="h5netcdf") as h:
        assert np.allclose(h["IR_108"].values, ds["IR_108"].values, equal_nan=True)
    assert not list(tmp_path.glob(".*part"))


def test_read_scene_errors_are_one_line(tmp_path):
    ds, _ = _scene()
    with pytest.raises(InputError, match="no such file"):
        read_scene(tmp_path / "missing.nc")
    trunc = tmp_path / "trunc.nc"
    write_scene(ds, trunc)
    trunc.write_bytes(trunc.read_bytes()[:1000])
    with pytest.raises(InputError, match="trunc.nc: cannot read"):
        read_scene(trunc)
    with pytest.raises(InputError, match=r"channel\(s\) IR_039 missing"):
        read_scene(write_scene(ds, tmp_path / "ok.nc"), ["IR_039"])
    ds2 = ds.copy()
    ds2["IR_108"][:] = np.nan
    with pytest.raises(InputError, match="channel IR_108 has no valid pixel"):
        read_scene(write_scene(ds2, tmp_path / "nan.nc"))

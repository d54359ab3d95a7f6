"""Bad input -> one clear line naming the file/key, non-zero exit, nothing half-written."""
import datetime as dt
import shutil

import h5py
import netCDF4
import numpy as np
import pytest

from cloudsr_hpc.data.geometry import SEVIRI_FULL_DISK
from cloudsr_hpc.data.readers import read_files
from cloudsr_hpc.data.sensors import load_registry
from cloudsr_hpc.data.synthetic.formats.seviri_nc import write_seviri_nc
from cloudsr_hpc.errors import InputError

REG = load_registry()
SEV = REG.sensor("seviri")
GRID = SEVIRI_FULL_DISK.window(300, 1900, 48, 64)
T = dt.datetime(2024, 6, 1, 12, 0)


def _fields(value=250.0, channels=("IR_108", "IR_039", "VIS006")):
    out = {}
    for c in channels:
        base = 30.0 if SEV.channel(c).quantity == "reflectance" else value
        out[c] = np.full(GRID.shape, base, np.float32) + np.linspace(0, 5, GRID.ncols, dtype=np.float32)
    return out


@pytest.fixture
def good(tmp_path):
    return write_seviri_nc(tmp_path / "ok", GRID, _fields(), T)[0]


def _assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_reader_round_trip_of_good_file(good):
    ds = read_files([good], SEV, "nc", ["IR_108", "VIS006"])
    assert ds["IR_108"].shape == GRID.shape
    assert np.allclose(ds["IR_108"].values, _fields()["IR_108"], atol=0.05)


def test_truncated_file(cli, good, tmp_path):
    bad = tmp_path / good.name
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    out = tmp_path / "scene.nc"
    proc = cli("read", bad, "--sensor", "seviri", "--channels", "IR_108", "--out", out)
    _assert_one_line_error(proc, str(bad), "reader failed")
    assert not out.exists() and not list(tmp_path.glob(".scene.nc*"))


def test_wrong_variable_names(cli, good, tmp_path):
    bad = tmp_path / good.name
    shutil.copy(good, bad)
    with netCDF4.Dataset(bad, "a") as nc:
        nc.renameVariable("ch9", "ch9_renamed")  # IR_108
    out = tmp_path / "scene.nc"
    proc = cli("read", bad, "--sensor", "seviri", "--channels", "IR_108", "--out", out)
    _assert_one_line_error(proc, good.name, "IR_108")
    assert not out.exists()


def test_all_nan_scene(tmp_path):
    f = _fields()
    f = {c: np.full_like(v, np.nan) for c, v in f.items()}
    p = write_seviri_nc(tmp_path, GRID, f, T)[0]
    with pytest.raises(InputError, match=r"no valid pixel \(all NaN\)") as e:
        read_files([p], SEV, "nc", ["IR_108"])
    assert p.name in str(e.value)


def test_missing_channel(tmp_path):
    p = write_seviri_nc(tmp_path, GRID, _fields(channels=("IR_039",)), T)[0]
    with pytest.raises(InputError) as e:
        read_files([p], SEV, "nc", ["IR_039", "IR_108"])
    assert p.name in str(e.value) and "IR_108" in str(e.value)


def test_unknown_sensor_and_channel(cli, good, tmp_path):
    proc = cli("read", good, "--sensor", "goes", "--out", tmp_path / "x.nc")
    _assert_one_line_error(proc, "sensors.yaml", "unknown sensor 'goes'")
    proc = cli("read", good, "--sensor", "seviri", "--channels", "IR_999", "--out", tmp_path / "x.nc")
    _assert_one_line_error(proc, "unknown channel 'IR_999'")


def test_malformed_yaml(cli, tmp_path):
    bad = tmp_path / "pairs.yaml"
    bad.write_text("pairs: {patch_lr: 32\n")
    proc = cli("synth", "--config", bad, "--start", "2024-06-01T12:00", "--archive", tmp_path / "a")
    _assert_one_line_error(proc, str(bad), "malformed YAML")
    assert not (tmp_path / "a").exists()
    bad.write_text("pairs:\n  patch_lr: big\n")
    proc = cli("pairs", "--config", bad, "--archive", tmp_path, "--out", tmp_path / "o")
    _assert_one_line_error(proc, "pairs.patch_lr: expected an integer")


def test_archive_without_file_for_date(cli, good):
    proc = cli("find", "--archive", good.parent, "--sensor", "seviri", "--format", "nc", "--date",
               "2024-06-02T12:00")
    _assert_one_line_error(proc, str(good.parent), "no seviri scene within", "2024-06-02T12:00")
    ok = cli("find", "--archive", good.parent, "--sensor", "seviri", "--format", "nc", "--date",
             "2024-06-01T12:05")
    assert ok.returncode == 0 and good.name in ok.stdout


def test_bad_dates(cli, tmp_path):
    proc = cli("synth", "--start", "yesterday", "--archive", tmp_path / "a")
    _assert_one_line_error(proc, "unknown date format")
    proc = cli("synth", "--start", "2024-06-02T12:00", "--end", "2024-06-01T12:00", "--archive",
               tmp_path / "a")
    _assert_one_line_error(proc, "is before --start")


def _viirs_over_grid(arch, when):
    """A small VIIRS granule (25 scans x 900 px, uniform fields) over GRID, ``when``."""
    from cloudsr_hpc.data.synthetic.formats.viirs import viirs_swath_lonlat, write_viirs_l1b
    lon0, lat0 = (float(np.ravel(v)[0]) for v in GRID.window(24, 32, 1, 1).lonlat())
    lon, lat = viirs_swath_lonlat(lon0, lat0, -12.0, 25, 900)
    fields = {c: np.full(lon.shape, 250.0 if c in ("I04", "I05") else 30.0, np.float32)
              for c in ("I01", "I02", "I03", "I04", "I05")}
    return write_viirs_l1b(arch / "viirs", lon, lat, fields, when)


def test_pairs_skips_a_corrupt_scene_and_records_it(tmp_path):
    """A corrupt file among good ones: it is read (its slot has an HR match), the run goes on with
    the good slot and the failure is recorded, naming the file."""
    from cloudsr_hpc.data.pairs import PairBuilder
    from cloudsr_hpc.schema import PairsConfig
    pair = REG.pair("seviri_viirs")
    arch, slots = tmp_path / "archive", (T, T + dt.timedelta(minutes=15))
    lr = [write_seviri_nc(arch / "seviri", GRID, _fields(channels=tuple(pair.lr_channels)), t)[0]
          for t in slots]
    for t in slots:
        _viirs_over_grid(arch, t + dt.timedelta(minutes=4))
    lr[0].write_bytes(lr[0].read_bytes()[:2000])  # truncated LR of the first slot
    b = PairBuilder(REG, pair, arch, tmp_path / "out", PairsConfig())
    assert [m[0].files for m in b.matches()] == [[lr[0]], [lr[1]]]  # both slots are paired, so read
    stats = b.run()
    assert len(stats.skipped) == 1 and lr[0].name in stats.skipped[0] and "reader failed" in stats.skipped[0]
    assert stats.slots == 1 and stats.pairs > 0  # the good slot
    times = set()
    for shard in (tmp_path / "out").rglob("pairs-*.h5"):
        with h5py.File(shard) as f:
            times |= {t.decode() for t in f["time"][:]}
    assert times == {slots[1].isoformat()}


def test_pairs_without_an_hr_match_is_one_error(tmp_path):
    """An LR scene with no HR within the time tolerance: nothing to pair, one clear error."""
    from cloudsr_hpc.data.pairs import PairBuilder
    from cloudsr_hpc.schema import PairsConfig
    pair = REG.pair("seviri_viirs")
    arch = tmp_path / "archive"
    write_seviri_nc(arch, GRID, _fields(), T)  # and no VIIRS at all
    b = PairBuilder(REG, pair, arch, tmp_path / "out", PairsConfig())
    assert b.matches() == []  # no HR within tolerance: nothing to pair
    with pytest.raises(InputError, match="no valid seviri_viirs pairs"):
        b.run()

"""End to end on the embedded default: synthetic archive in real formats -> satpy -> training shards."""
import datetime as dt
import warnings

import h5py
import numpy as np
import pytest
import yaml

from cloudsr_hpc.data.index import ArchiveIndex
from cloudsr_hpc.data.sensors import load_registry
from cloudsr_hpc.evaluation.alignment import pair_shift_lr_px
from cloudsr_hpc.evaluation.spectra import spectral_slope

pytestmark = pytest.mark.slow
REG = load_registry()


def _satpy_load(reader, files, names):
    from satpy import Scene
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scn = Scene(reader=reader, filenames=[str(f) for f in files])
        scn.load(names)
    return scn


def test_synth_writes_real_names_that_satpy_opens(sv_archive):
    root, _ = sv_archive
    lr = sorted((root / "archive" / "seviri").rglob("*.nc"))
    obs = sorted((root / "archive" / "viirs").rglob("VNP02IMG.A2024153.*.nc"))
    geo = sorted((root / "archive" / "viirs").rglob("VNP03IMG.A2024153.*.nc"))
    assert len(lr) == 5 and len(obs) == 5 and len(geo) == 5
    assert lr[0].name.startswith("W_XX-EUMETSAT-Darmstadt,VIS+IR+HRV+IMAGERY,MSG4+SEVIRI_C_EUMG_20240601113")
    scn = _satpy_load("seviri_l1b_nc", [lr[2]], ["IR_108", "VIS006"])
    assert scn.start_time == dt.datetime(2024, 6, 1, 12, 0)
    bt = scn["IR_108"].values
    # space, cold tops, warm surface
    assert np.isnan(bt).any() and 200 < np.nanmin(bt) < 245 and 280 < np.nanmax(bt) < 310
    v = _satpy_load("viirs_l1b", [obs[2], geo[2]], ["I05", "I01"])
    assert v["I05"].shape[0] % 32 == 0 and 200 < np.nanmin(v["I05"].values) < 250
    # the configured overpass lag
    assert v.start_time - dt.datetime(2024, 6, 1, 12, 0) == dt.timedelta(minutes=4)


def test_archive_index_pairs_every_slot(sv_archive):
    root, _ = sv_archive
    idx = ArchiveIndex(root / "archive", REG)
    assert len(idx.times("seviri", ["nc"])) == 5 and len(idx.times("viirs", ["l1b"])) == 5


def test_pairs_shards_and_provenance(sv_archive):
    root, stats = sv_archive
    assert stats["pairs"] > 20 and stats["hr_patches"] >= stats["pairs"] and not stats["skipped"]
    train = sorted((root / "pairs" / "train").glob("pairs-*.h5"))
    val = sorted((root / "pairs" / "val").glob("pairs-*.h5"))
    assert train and val  # the 5th slot is held out
    with h5py.File(train[0]) as f:
        lr, hr = f["lr"][:], f["hr"][:]
        assert lr.shape[1:] == (5, 32, 32) and hr.shape[1:] == (5, 128, 128)
        assert np.isfinite(lr).mean() >= 0.95 and np.isfinite(hr).mean() >= 0.95
        assert "VNP02IMG" in f.attrs["source_files"] and f.attrs["pair"] == "seviri_viirs"
        times = {t.decode() for t in f["time"][:]}
    assert "2024-06-01T12:30:00" not in times  # val slot never leaks into train


def _mean_shift(shards, channel=4, scale=4):
    shifts = []
    for p in shards:
        with h5py.File(p) as f:
            for lr, hr in zip(f["lr"][:, channel], f["hr"][:, channel], strict=True):
                if np.nanstd(lr) > 3:  # a patch with structure to correlate
                    shifts.append(pair_shift_lr_px(lr, hr, scale))
    return np.median(np.array(shifts), axis=0), len(shifts)


def test_stage1_pairs_are_misaligned_as_configured(sv_archive):
    root, _ = sv_archive
    pair = REG.pair("seviri_viirs")
    sim = pair.simulate
    step = 3000.403
    # HR content displacement vs LR = advection over the overpass lag + LR misregistration
    u, v = 12.0, 3.0
    lag = sim.hr_dt_minutes * 60
    expect = np.array([u * lag / step + sim.misregistration_lr_px[0],
                       -v * lag / step + sim.misregistration_lr_px[1]])
    got, n = _mean_shift(sorted((root / "pairs" / "train").glob("pairs-*.h5")))
    assert n > 10
    assert np.all(np.abs(got - expect) < 0.3), (got, expect)


def test_hr_targets_keep_cloud_spectral_slope(sv_archive):
    root, _ = sv_archive
    with h5py.File(sorted((root / "pairs" / "train").glob("hr-*.h5"))[0]) as f:
        hr = f["hr"][:, 4]
    slopes = [spectral_slope(p, (1 / 64, 1 / 4)) for p in hr if np.isfinite(p).all() and p.std() > 3]
    s2d = float(np.median(slopes))
    assert -3.3 <= s2d <= -2.4, s2d


def test_corrupt_scene_is_recorded_and_the_rest_are_paired(sv_archive, tmp_path, cli):
    import shutil
    root, good_stats = sv_archive
    arch = tmp_path / "archive"
    shutil.copytree(root / "archive", arch)
    victim = sorted((arch / "seviri").rglob("*.nc"))[1]
    victim.write_bytes(victim.read_bytes()[:5000])
    out = cli("pairs", "--pair", "seviri_viirs", "--archive", arch, "--out", tmp_path / "pairs", check=True)
    stats = yaml.safe_load(out.stdout)
    assert stats["slots"] == 4 and len(stats["skipped"]) == 1 and victim.name in stats["skipped"][0]
    assert 0 < stats["pairs"] < good_stats["pairs"]


def test_same_seed_same_archive(tmp_path, cli):
    for d in ("a", "b"):
        cli("synth", "--pair", "seviri_viirs", "--start", "2024-06-01T12:00", "--archive", tmp_path / d,
            "--seed", "7", check=True)
    fa, fb = (sorted((tmp_path / d).rglob("VNP02IMG*.nc")) + sorted((tmp_path / d).rglob("*SEVIRI*.nc"))
              for d in ("a", "b"))
    assert [p.name for p in fa] == [p.name for p in fb]
    sa = _satpy_load("seviri_l1b_nc", [fa[1]], ["IR_108"])["IR_108"].values
    sb = _satpy_load("seviri_l1b_nc", [fb[1]], ["IR_108"])["IR_108"].values
    assert np.array_equal(sa, sb, equal_nan=True)
    cli("synth", "--pair", "seviri_viirs", "--start", "2024-06-01T12:00", "--archive", tmp_path / "c",
        "--seed", "8", check=True)
    sc = _satpy_load("seviri_l1b_nc", sorted((tmp_path / "c").rglob("*SEVIRI*.nc")),
                     ["IR_108"])["IR_108"].values
    assert not np.allclose(sa, sc, equal_nan=True)


@pytest.fixture(scope="module")
def mtg_archive(tmp_path_factory):
    from tests.conftest import run_cli
    root = tmp_path_factory.mktemp("mtg")
    run_cli("synth", "--pair", "msg_mtg", "--start", "2024-06-01T11:45", "--end", "2024-06-01T12:15",
            "--archive", root / "archive", check=True)
    out = run_cli("pairs", "--pair", "msg_mtg", "--archive", root / "archive", "--out", root / "pairs",
                  check=True)
    return root, yaml.safe_load(out.stdout)


def test_msg_mtg_fci_files_open_in_satpy_and_pair(mtg_archive):
    import dask
    root, stats = mtg_archive
    idx = ArchiveIndex(root / "archive", REG)
    assert len(idx.times("fci", ["hrfi", "fdhsi"])) == 3
    scene = idx.find("fci", ["hrfi", "fdhsi"], dt.datetime(2024, 6, 1, 12, 0))
    names = [f.name for f in scene.files]
    assert any("-1C-RRAD-HRFI-FD-" in n for n in names) and any("-1C-RRAD-FDHSI-FD-" in n for n in names)
    with dask.config.set(scheduler="synchronous"):  # satpy's FCI reader is not thread safe (satpy#3043)
        scn = _satpy_load("fci_l1c_nc", scene.files, ["ir_105", "vis_08"])
        assert scn["ir_105"].shape == (11136, 11136) and scn["vis_08"].shape == (11136, 11136)
        assert 200 < float(np.nanmin(scn["ir_105"].values)) < 250
    assert stats["pairs"] > 20 and not stats["skipped"]
    sim = REG.pair("msg_mtg").simulate
    lag, step = sim.hr_dt_minutes * 60, 3000.403
    expect = np.array([12.0 * lag / step + sim.misregistration_lr_px[0],
                       -3.0 * lag / step + sim.misregistration_lr_px[1]])
    got, n = _mean_shift(sorted((root / "pairs" / "train").glob("pairs-*.h5")))
    assert n > 5 and np.all(np.abs(got - expect) < 0.3), (got, expect)


def test_full_disk_is_a_true_3712_square(tmp_path, cli):
    cli("synth", "--pair", "seviri_viirs", "--start", "2024-06-01T12:00", "--archive", tmp_path, "--size",
        "full", check=True)
    f = sorted((tmp_path / "seviri").rglob("*.nc"))
    scn = _satpy_load("seviri_l1b_nc", f, ["IR_108"])
    bt = scn["IR_108"].values
    assert bt.shape == (3712, 3712)
    space = np.isnan(bt).mean()
    assert 0.15 < space < 0.3  # the corners of the disk are space (1 - pi/4 ~ 0.21 plus the limb)
    assert np.nanmin(bt) < 240 and np.nanmax(bt) > 290


def test_native_and_netcdf_of_one_slot_read_the_same(tmp_path, cli):
    from cloudsr_hpc.data.readers import read_files
    cli("synth", "--pair", "seviri_viirs", "--start", "2024-06-01T12:00", "--archive", tmp_path,
        "--lr-format", "nc", "--lr-format", "native", check=True)
    idx = ArchiveIndex(tmp_path, REG)
    sev = REG.sensor("seviri")
    chans = ["IR_108", "VIS006"]
    nat = read_files(idx.find("seviri", ["native"], dt.datetime(2024, 6, 1, 12)).files, sev, "native", chans)
    nc = read_files(idx.find("seviri", ["nc"], dt.datetime(2024, 6, 1, 12)).files, sev, "nc", chans)
    assert nat.attrs["grid_row0"] == nc.attrs["grid_row0"] and nat["IR_108"].shape == nc["IR_108"].shape
    for c in chans:  # 10-bit counts with per-file gains: equal to within a count
        assert np.array_equal(np.isnan(nat[c].values), np.isnan(nc[c].values))
        assert np.nanmax(np.abs(nat[c].values - nc[c].values)) < 0.2


def test_pairs_quicklook_png(sv_archive, tmp_path):
    from cloudsr_hpc.evaluation.plots import pairs_quicklook
    root, _ = sv_archive
    png = pairs_quicklook(sorted((root / "pairs" / "train").glob("pairs-*.h5"))[0], tmp_path / "q.png", n=2)
    import matplotlib.image as mpimg
    img = mpimg.imread(png)
    assert img.shape[0] > 300 and img.shape[1] > 300 and img[..., :3].std() > 0.1  # a real picture, not blank

"""End to end on the embedded default: synthetic archive in real formats -> satpy -> training shards."""
import datetime as dt
import warnings
from pathlib import Path

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


@pytest.fixture(scope="module")
def sv_archive(tmp_path_factory):
    from tests.conftest import run_cli
    root = tmp_path_factory.mktemp("sv")
    run_cli("synth", "--pair", "seviri_viirs", "--start", "2024-06-01T11:30", "--end", "2024-06-01T12:30",
            "--archive", root / "archive", check=True)
    out = run_cli("pairs", "--pair", "seviri_viirs", "--archive", root / "archive", "--out", root / "pairs",
                  check=True)
    return root, yaml.safe_load(out.stdout)


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
    assert np.isnan(bt).any() and 200 < np.nanmin(bt) < 245 and 280 < np.nanmax(bt) < 310  # space, cold tops, warm surface
    v = _satpy_load("viirs_l1b", [obs[2], geo[2]], ["I05", "I01"])
    assert v["I05"].shape[0] % 32 == 0 and 200 < np.nanmin(v["I05"].values) < 250
    assert v.start_time - dt.datetime(2024, 6, 1, 12, 0) == dt.timedelta(minutes=4)  # the configured overpass lag


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
            for lr, hr in zip(f["lr"][:, channel], f["hr"][:, channel]):
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
    expect = np.array([u * lag / step + sim.misregistration_lr_px[0], -v * lag / step + sim.misregistration_lr_px[1]])
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

"""Ensembles in inference: N members per scene, mean and spread per channel, members kept on demand,
the same numbers whatever the rank count, member 0 equal to the single sample."""
import numpy as np
import pytest
import xarray as xr

from cloudsr_hpc.config import load
from cloudsr_hpc.data.sensors import load_registry
from cloudsr_hpc.errors import ConfigError
from cloudsr_hpc.inference.mpi import Ranks
from cloudsr_hpc.inference.pipeline import ScenePipeline, verify_output
from cloudsr_hpc.schema import InferConfig
from tests.test_inference import HR_CH, model_sets, run_infer, sets

TILING = ["tile_lr=32", "overlap_lr=8", "chunk=64"]
# overlap >= 2 receptive margins of the 2-step Stage 2 (56 HR px): every pixel's members are those of a
# whole-scene pass, so the spread of the blended tiles is exactly the members' spread
EXACT = ["tile_lr=64", "overlap_lr=28", "chunk=64"]


def run_pipeline(models, scene, out, *extra, tiling=EXACT):
    cfg = load(InferConfig, "infer.yaml", model_sets(models) + tiling + list(extra))
    pipe = ScenePipeline(cfg, load_registry(), Ranks(), out, progress=False)
    assert pipe.blend.exact == (tiling == EXACT)
    return pipe.run([scene])


@pytest.fixture(scope="module")
def single(models, scene, tmp_path_factory):
    return run_pipeline(models, scene, tmp_path_factory.mktemp("single"), "stages=2").path


@pytest.fixture(scope="module")
def ensemble(models, scene, tmp_path_factory):
    return run_pipeline(models, scene, tmp_path_factory.mktemp("ens"), "stages=2", "members=3",
                        "keep_members=true").path


def test_member_zero_is_the_single_sample_and_the_statistics_are_the_members(single, ensemble):
    assert "_ens3_" in ensemble.name and "_ens" not in single.name  # never the single sample's name
    with xr.open_dataset(single) as one, xr.open_dataset(ensemble) as ens:
        assert ens.sizes["member"] == 3 and list(ens["member"].values) == [0, 1, 2]
        for c in HR_CH:
            m = ens[f"{c}_members"].values
            assert m.shape == (3, *one[c].shape)
            np.testing.assert_array_equal(m[0], one[c].values)  # member 0: today's sample, bit for bit
            valid = np.isfinite(m[0])
            assert valid.any()
            assert np.abs(m[1] - m[0])[valid].max() > 0  # members draw their own noise
            np.testing.assert_allclose(ens[c].values, m.mean(0), rtol=1e-5, atol=1e-4)
            np.testing.assert_allclose(ens[f"{c}_std"].values, m.std(0, ddof=1), rtol=1e-3, atol=1e-3)
            assert np.array_equal(np.isnan(ens[c].values), np.isnan(one[c].values))
            assert ens[c].attrs["cell_methods"] == "realization: mean"
            assert ens[f"{c}_std"].attrs["cell_methods"] == "realization: standard_deviation"
            assert ens[f"{c}_std"].attrs["units"] == one[c].attrs["units"]
        assert int(ens.attrs["ensemble_members"]) == 3
    verify_output(ensemble, HR_CH, full=True)  # every chunk of the 3-D member variables decodes too


def cf_issues(path):
    """High and medium priority findings of the IOOS compliance checker (cf:1.10)."""
    from compliance_checker.suite import CheckSuite
    cs = CheckSuite()
    cs.load_all_available_checkers()
    results, errors = cs.run_all(cs.load_dataset(str(path)), ["cf:1.10"], [], [])["cf:1.10"]
    rep = cs.build_structure("cf:1.10", results, str(path), 2)
    return list(errors) + [f"{r.name}: {m}" for k in ("high_priorities", "medium_priorities") for r in rep[k]
                           for m in r.msgs]


def test_ensemble_output_is_cf_compliant(ensemble):
    assert cf_issues(ensemble) == []


def test_ensemble_without_members_kept_and_packed_to_int16(models, scene, ensemble, tmp_path):
    path = run_pipeline(models, scene, tmp_path, "stages=2", "members=3", "keep_members=false",
                        "packing=int16").path
    with xr.open_dataset(path) as pk, xr.open_dataset(ensemble) as ens:
        assert "member" not in pk.dims and f"{HR_CH[0]}_members" not in pk
        for c in HR_CH:
            for v in (c, f"{c}_std"):
                step = pk[v].encoding["scale_factor"]
                f, q = ens[v].values, pk[v].values
                assert pk[v].encoding["dtype"] == np.int16
                assert np.nanmax(np.abs(q - f)) <= step / 2 + 1e-3
    verify_output(path, HR_CH, full=True)


def test_a_deterministic_model_refuses_members_and_the_range_is_checked(models, scene, tmp_path):
    with pytest.raises(ConfigError, match="infer.members"):
        run_pipeline(models, scene, tmp_path, "stages=regression", "members=4")
    with pytest.raises(ConfigError, match="members"):
        load(InferConfig, "infer.yaml", ["members=0"])
    p = run_infer("--input", scene, "--out", tmp_path / "r", "--members", "4", "--stages", "regression",
                  *sets(*model_sets(models)))
    assert p.returncode == 2 and "infer.members" in p.stderr and "Traceback" not in p.stderr
    assert not list((tmp_path / "r").glob("*.nc"))


@pytest.mark.slow
def test_ensemble_is_the_same_whatever_the_rank_count(models, scene, ensemble, tmp_path):
    """Members are keyed by (member, global pixel): 2 MPI ranks reproduce 1 rank bit for bit."""
    outs = {}
    for n in (1, 2):
        p = run_infer("--input", scene, "--out", tmp_path / f"n{n}", "--stages", "2", "--members", "3",
                      "--keep-members", *sets(*model_sets(models), *TILING), n=n, threads=1)
        assert p.returncode == 0, p.stderr[-2000:]
        outs[n] = next((tmp_path / f"n{n}").glob("*_ens3_*.nc"))
    with xr.open_dataset(outs[1]) as a, xr.open_dataset(outs[2]) as b:
        for v in a.data_vars:
            np.testing.assert_array_equal(a[v].values, b[v].values)


def test_a_campaign_takes_members_and_its_outputs_verify(campaign_archive, models, tmp_path):
    """``campaign --set members=2``: every scene lands as a 2-member ensemble under its ensemble name."""
    import json

    from tests.conftest import run_cli
    root, name = tmp_path / "campaigns", "ens"
    run = run_cli("campaign", "--name", name, "--root", root, "--start", "2024-06-01T11:00", "--end",
                  "2024-06-01T11:15", "--archive", campaign_archive, "--executor", "local", "--workers", "1",
                  *sets(*model_sets(models), "stages=2", "members=2", "tile_lr=64", "overlap_lr=8",
                        "chunk=128"))
    assert run.returncode == 0, run.stderr[-2000:]
    st = json.loads(run_cli("status", name, "--root", root, "--json").stdout)
    assert st["counts"]["done"] == 2
    outs = sorted((root / name / "output").glob("*.nc"))
    assert [p.name.split("_")[4] for p in outs] == ["ens2", "ens2"]
    for p in outs:
        verify_output(p, HR_CH, full=True)
        with xr.open_dataset(p) as ds:
            assert f"{HR_CH[0]}_std" in ds and float(ds[f"{HR_CH[-1]}_std"].max()) > 0


def test_a_calibrated_ensemble_has_its_spread_inflated_and_its_mean_unchanged(models, scene, ensemble,
                                                                               tmp_path):
    """``infer.calibration``: std x alpha per channel, kept members inflated about the same mean,
    the mean bit for bit; the factors and the file are recorded; refused for another export."""
    from cloudsr_hpc.inference.pipeline import load_cascade
    from cloudsr_hpc.models import calibration
    cascade = load_cascade(load(InferConfig, "infer.yaml", model_sets(models) + ["stages=2"]))
    ratios = {c: 1 / (1.5 + i) for i, c in enumerate(HR_CH)}  # alpha 1.5, 2.5, ... per channel
    cal = calibration.save(tmp_path / "cal.json", [calibration.fit("stage2", cascade, ratios, {})])
    path = run_pipeline(models, scene, tmp_path / "out", "stages=2", "members=3", "keep_members=true",
                        f"calibration={cal}").path
    with xr.open_dataset(path) as c, xr.open_dataset(ensemble) as e:
        for ch in HR_CH:
            a = 1 / ratios[ch]
            np.testing.assert_array_equal(c[ch].values, e[ch].values)
            np.testing.assert_allclose(c[f"{ch}_std"].values, a * e[f"{ch}_std"].values, rtol=1e-4, atol=1e-4)
            m, m0 = c[f"{ch}_members"].values, e[f"{ch}_members"].values
            np.testing.assert_allclose(m - m.mean(0), a * (m0 - m0.mean(0)), rtol=1e-3, atol=2e-3)
        assert c.attrs["ensemble_spread_inflation"].split()[0] == f"{HR_CH[0]}=1.5"
        assert str(cal) in c.attrs["ensemble_calibration"]
    verify_output(path, HR_CH, full=True)
    with pytest.raises(ConfigError, match="infer.calibration"):  # one member: nothing to inflate
        run_pipeline(models, scene, tmp_path / "one", "stages=2", f"calibration={cal}")
    p = run_infer("--input", scene, "--out", tmp_path / "reg", "--stages", "cascade", "--members", "2",
                  "--calibration", cal, *sets(*model_sets(models)))
    assert p.returncode == 2 and "was not fitted for" in p.stderr and "Traceback" not in p.stderr
    assert not list((tmp_path / "reg").glob("*.nc"))

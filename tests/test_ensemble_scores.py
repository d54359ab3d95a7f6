"""Ensemble scores of `submit evaluate --members N`: the fair CRPS against its O(N^2) definition,
spread-skill and rank histograms of calibrated and under-dispersive ensembles, and end to end on
tiny untrained models (held-out pairs and a scene): the Ensemble table, the rank-histogram plot,
member 0 scored as the single sample, and N = 1 identical to no option."""
import datetime as dt
import json

import numpy as np
import pytest
import torch
from scipy import ndimage, stats

from cloudsr_hpc.evaluation import metrics as M
from cloudsr_hpc.evaluation.scores import EnsembleSums
from tests.conftest import PAIR_NORM, make_export

CHANS = ["I01", "I02", "I03", "I04", "I05"]
QUANT = ["reflectance"] * 3 + ["brightness_temperature"] * 2


def brute_crps(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The fair CRPS by its definition, O(N^2) per pixel."""
    n = x.shape[0]
    skill = np.abs(x - y).mean(0)
    if n == 1:
        return skill
    pairs = sum(np.abs(x[i] - x[j]) for i in range(n) for j in range(n))
    return skill - pairs / (2 * n * (n - 1))


@pytest.mark.parametrize("n", [1, 2, 3, 8, 17])
def test_crps_equals_the_brute_force_definition(n):
    rng = np.random.default_rng(n)
    x, y = rng.normal(size=(n, 2000)), rng.normal(size=2000)
    x[:, :100] = np.round(x[:, :100])  # ties among members and with the truth
    y[:100] = np.round(y[:100])
    got = M.crps_ensemble(torch.from_numpy(x), torch.from_numpy(y)).numpy()
    np.testing.assert_allclose(got, brute_crps(x, y), rtol=0, atol=1e-12)


def _sums(members: np.ndarray, truth: np.ndarray, seed: int = 0) -> dict:
    """EnsembleSums of members (N, 1, C, H, W) against truth (1, C, H, W), every pixel valid."""
    n, _, c = members.shape[:3]
    norm = ([0.0] * c, [2.0] * c)  # physical = normalised + 1: physical and normalised errors equal
    e = EnsembleSums(CHANS[:c], QUANT[-c:], norm, n, seed)
    e.add(torch.from_numpy(members).float(), torch.from_numpy(truth).float(),
          torch.ones(1, 1, *truth.shape[-2:]))
    return e.result()


def test_one_member_crps_is_the_mae():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(1, 1, 2, 40, 40)), rng.normal(size=(1, 2, 40, 40))
    r = _sums(x, y)
    assert r["deterministic"] and r["overall"]["crps"] == r["overall"]["mae"]
    assert r["overall"]["mae"] == pytest.approx(np.abs(x[0] - y).mean(), rel=1e-6)
    for ch in r["channels"].values():
        assert ch["crps"] == ch["mae"] and "rank_histogram" not in ch
    # and through the per-pixel estimator
    np.testing.assert_array_equal(M.crps_ensemble(torch.from_numpy(x[:, 0]), torch.from_numpy(y[0])).numpy(),
                                  np.abs(x[0] - y)[0])


def _chi2_p(hist) -> float:
    return float(stats.chisquare(np.asarray(hist, np.float64)).pvalue)


def test_calibrated_ensemble_has_spread_skill_one_and_a_flat_rank_histogram():
    """Truth and members i.i.d. from the same Gaussian at each pixel (its mean varies by pixel)."""
    rng = np.random.default_rng(2)
    n, shape = 10, (1, 2, 120, 120)
    mu = rng.normal(size=shape) * 3
    truth, members = mu + rng.normal(size=shape), mu[None] + rng.normal(size=(n, *shape))
    r = _sums(members, truth)
    assert abs(r["overall"]["spread_skill"] - 1) < 0.1
    for ch in r["channels"].values():
        assert abs(ch["spread_skill"] - 1) < 0.1
        assert len(ch["rank_histogram"]) == n + 1 and sum(ch["rank_histogram"]) == 120 * 120
        assert _chi2_p(ch["rank_histogram"]) > 0.01  # flat: not rejected
    assert r["overall"]["outside"] == pytest.approx(2 / (n + 1), abs=0.01)
    # expected CRPS of a calibrated N(mu, 1) forecast: E|X - y| - E|X - X'|/2 = 2/sqrt(pi) - 1/sqrt(pi)
    assert r["overall"]["crps"] == pytest.approx(1 / np.sqrt(np.pi), rel=0.03)


def test_under_dispersive_ensemble_has_ratio_below_one_and_a_u_shaped_histogram():
    rng = np.random.default_rng(3)
    n, shape = 10, (1, 2, 120, 120)
    mu = rng.normal(size=shape) * 3
    truth, members = mu + rng.normal(size=shape), mu[None] + 0.4 * rng.normal(size=(n, *shape))
    r = _sums(members, truth)
    assert r["overall"]["spread_skill"] < 0.6
    for ch in r["channels"].values():
        h = np.asarray(ch["rank_histogram"], np.float64)
        assert ch["spread_skill"] < 0.6
        assert _chi2_p(h) < 1e-6
        assert min(h[0], h[-1]) > 3 * h[1:-1].mean()  # U: the truth is often outside the ensemble
    assert r["overall"]["outside"] > 0.5


def test_ties_are_broken_at_random_and_bands_add_up():
    """Members all equal to the truth: ranks spread evenly (seeded); and sums over row blocks equal
    the sums of the whole (the scene protocol's bands)."""
    y = np.zeros((1, 1, 100, 100))
    r = _sums(np.zeros((4, 1, 1, 100, 100)), y, seed=5)
    assert _chi2_p(r["channels"]["I01"]["rank_histogram"]) > 0.01
    zeros = _sums(np.zeros((4, 1, 1, 100, 100)), y, seed=5)
    assert r["channels"]["I01"]["rank_histogram"] == zeros["channels"]["I01"]["rank_histogram"]
    rng = np.random.default_rng(6)
    x = torch.from_numpy(rng.normal(size=(5, 1, 2, 64, 32)))
    t = torch.from_numpy(rng.normal(size=(1, 2, 64, 32)))
    mask = torch.from_numpy((rng.random((1, 2, 64, 32)) > 0.2).astype(np.float32))
    x[2, 0, 1, :5] = float("nan")  # a member without a value: the pixel does not count
    whole = EnsembleSums(CHANS[:2], QUANT[:2], PAIR_NORM["hr"], 5)
    whole.add(x, t, mask)
    parts = EnsembleSums(CHANS[:2], QUANT[:2], PAIR_NORM["hr"], 5)
    parts.chunk = 5 * 32 * 7  # several chunks per block too
    for a, b in ((0, 20), (20, 64)):
        parts.add(x, t, mask, (a, b))
    rw, rp = whole.result(), parts.result()
    assert rw["channels"]["I02"]["pixels"] == int(mask[0, 1].sum()) - 5 * 32 + int((1 - mask[0, 1, :5]).sum())
    for k in ("crps", "mae", "spread_skill", "rmse_mean", "outside"):
        assert rp["overall"][k] == pytest.approx(rw["overall"][k], rel=1e-12)
    assert rp["channels"]["I01"]["rank_histogram"] == rw["channels"]["I01"]["rank_histogram"]


def test_members_is_range_checked_by_name(tmp_path, capsys):
    from cloudsr_hpc.config import load
    from cloudsr_hpc.errors import ConfigError
    from cloudsr_hpc.evaluation.protocol import Bicubic
    from cloudsr_hpc.schema import EvaluateConfig
    from cloudsr_hpc.submit import main
    assert load(EvaluateConfig, "evaluate.yaml", []).members == 1
    assert load(EvaluateConfig, "evaluate.yaml", ["members=64"]).members == 64
    for bad in (0, 65):
        with pytest.raises(ConfigError) as e:
            load(EvaluateConfig, "evaluate.yaml", [f"members={bad}"])
        assert f"evaluate.yaml: members = {bad}: must be in [1, 64]" in str(e.value)
    assert main(["evaluate", "--members", "0", "--out", str(tmp_path / "out")]) == 2
    assert "members = 0: must be in [1, 64]" in capsys.readouterr().err and not (tmp_path / "out").exists()
    # bicubic takes (and ignores) a member like the cascade
    b = Bicubic(4, PAIR_NORM["hr"], CHANS, CHANS)
    lr, m = torch.rand(1, 5, 8, 8), torch.ones(1, 5, 8, 8)
    assert not b.stochastic and torch.equal(b(lr, m, [(0, 0)], member=3)[0], b(lr, m, [(0, 0)])[0])


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Tiny untrained Stage 1, Stage 2 (one sampling step) and regression exports, and 4 held-out
    5-channel pairs of 8^2 -> 32^2 px."""
    from cloudsr_hpc.data.shards import ShardWriter
    d = tmp_path_factory.mktemp("ens")
    models = {"stage1": make_export(d / "s1", stage=1, seed=0),
              "stage2": make_export(d / "s2", stage=2, seed=1),
              "regression": make_export(d / "reg", stage="regression", seed=2)}
    attrs = {"pair": "seviri_viirs", "scale": 4, "lr_sensor": "seviri", "hr_sensor": "viirs",
             "lr_channels": ["VIS006", "VIS008", "IR_016", "IR_039", "IR_108"], "hr_channels": CHANS,
             "norm_hr": PAIR_NORM["hr"], "norm_lr": PAIR_NORM["lr"]}
    rng = np.random.default_rng(0)
    w = ShardWriter(d / "val", "pairs", 8, attrs)
    for i in range(4):
        frac = np.clip(ndimage.gaussian_filter(rng.standard_normal((32, 32)), 2) * 3 + 0.4, 0, 1)
        hr = np.stack([5 + 80 * frac, 5 + 78 * frac, 4 + 55 * frac, 300 - 70 * frac,
                       295 - 70 * frac]).astype(np.float32)
        w.add(hr, dt.datetime(2024, 6, 1, 12), i, i, ["x"], lr=hr.reshape(5, 8, 4, 8, 4).mean((2, 4)))
    w.flush()
    return d, models


def _evaluate(setup, out, *args):
    from cloudsr_hpc.submit import main
    d, models = setup
    argv = ["evaluate", "--checkpoints", *map(str, models.values()), "--out", str(out), "--set",
            "lpips=false", "--set", "spectrum_tile=32", "--set", "batch_size=4", *args]
    if "--hr" not in args:
        argv += ["--pairs", str(d / "val")]
    assert main(argv) == 0
    return json.loads((out / "metrics.json").read_text()), (out / "metrics.md").read_text()


def test_held_out_pairs_with_three_members(setup, tmp_path):
    plain, md_plain = _evaluate(setup, tmp_path / "plain")
    one, md_one = _evaluate(setup, tmp_path / "one", "--members", "1")
    doc, md = _evaluate(setup, tmp_path / "three", "--members", "3")
    # N = 1 is exactly today's output
    assert one == plain and md_one == md_plain
    assert (tmp_path / "one" / "metrics.csv").read_text() == (tmp_path / "plain" / "metrics.csv").read_text()
    assert "ensemble" not in plain and not (tmp_path / "plain" / "rank_histogram.png").exists()
    # member 0 is the single sample: every method's scores unchanged
    for m, s in plain["scores"].items():
        assert doc["scores"][m] == s
    assert list(doc["scores"]) == ["bicubic", "regression", "stage1", "stage1_ensemble_mean", "stage2",
                                   "stage2_ensemble_mean", "cascade", "cascade_ensemble_mean"]
    assert "Stage 2 only (structure), ensemble mean of 3" in md and "#### Ensemble (3 members" in md
    ens = doc["ensemble"]["methods"]
    assert doc["ensemble"]["members"] == 3 and doc["info"]["members"] == 3
    for m in ("bicubic", "regression"):  # deterministic: MAE, which is their CRPS
        assert ens[m]["deterministic"] and ens[m]["members"] == 1
        assert ens[m]["overall"]["crps"] == ens[m]["overall"]["mae"] > 0
        assert all(ch["mae_physical"] > 0 for ch in ens[m]["channels"].values())
        assert ens[m]["by_quantity"]["brightness_temperature"]["units"] == "K"
    for m in ("stage1", "stage2", "cascade"):
        e = ens[m]
        assert e["members"] == 3 and not e["deterministic"]
        assert 0 < e["overall"]["spread_skill"] and 0 < e["overall"]["crps"]
        for c, ch in enumerate(e["channels"].values()):
            assert len(ch["rank_histogram"]) == 4 and sum(ch["rank_histogram"]) == ch["pixels"]
            half_range = (PAIR_NORM["hr"][1][c] - PAIR_NORM["hr"][0][c]) / 2
            assert ch["crps_physical"] == pytest.approx(ch["crps"] * half_range)
        # a fair CRPS of a spread ensemble is below its single member's MAE in expectation; at least not above
        # by much
        assert e["overall"]["crps"] < e["overall"]["mae"] * 1.05
    row = next(ln for ln in md.splitlines() if ln.startswith("| Regression UNet | 1 (deterministic)"))
    assert "—" in row
    csv_rows = (tmp_path / "three" / "metrics.csv").read_text().splitlines()
    assert csv_rows[0].endswith("spread_skill,rmse_ensemble_mean,outside_fraction,rank_histogram")
    assert len(csv_rows) == 1 + 8 * 6
    png = tmp_path / "three" / "rank_histogram.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scene_with_three_members_streams_bands_exactly(setup, tmp_path):
    """`evaluate --hr --members 3`: the Ensemble table and plot; member 0 stitched exactly as the
    single sample; another band height changes no ensemble score (the members are streamed by band)."""
    from cloudsr_hpc.config import load
    from cloudsr_hpc.data.sensors import load_registry
    from cloudsr_hpc.evaluation.protocol import evaluate_scene, load_methods
    from cloudsr_hpc.evaluation.report import _finite
    from cloudsr_hpc.schema import EvaluateConfig
    from tests.test_evaluate import write_hr_scene
    hr = write_hr_scene(tmp_path / "hr.nc", 64, 64)
    sets = ["lpips=false", "spectrum_tile=32", "batch_size=4", "tile_lr=8", "overlap_lr=2", "band_rows=64"]
    doc, md = _evaluate(setup, tmp_path / "three", "--hr", str(hr), "--scale", "4", "--methods",
                        "bicubic,cascade", "--members", "3", *[a for kv in sets for a in ("--set", kv)])
    assert "#### Ensemble (3 members" in md and (tmp_path / "three" / "rank_histogram.png").is_file()
    _, models = setup

    def scene(*extra):  # in process, no report: the scores only
        cfg = load(EvaluateConfig, "evaluate.yaml", sets + ["methods=[bicubic,cascade]", *extra,
                                                            *(f"{k}_checkpoint={models[k]}"
                                                              for k in ("stage1", "stage2"))])
        methods, ref = load_methods(cfg)
        return evaluate_scene(cfg, methods, ref, load_registry(), hr, 4)

    one, band = scene("members=1"), scene("members=3", "band_rows=32")
    for m in ("bicubic", "cascade"):  # member 0 stitched as the single sample
        assert json.loads(json.dumps(_finite(one.scores[m]))) == doc["scores"][m]
    e, eb = doc["ensemble"]["methods"]["cascade"], band.ensemble["cascade"]
    assert e["members"] == 3 and e["overall"]["pixels"] > 0 and one.ensemble == {}
    for k in ("crps", "mae", "spread_skill", "rmse_mean"):  # band height changes no score
        assert eb["overall"][k] == pytest.approx(e["overall"][k], rel=1e-6)
    assert eb["overall"]["pixels"] == e["overall"]["pixels"]
    for k in ("psnr", "ssim", "grad"):
        assert band.scores["cascade_ensemble_mean"]["overall"][k] == pytest.approx(
            doc["scores"]["cascade_ensemble_mean"]["overall"][k], rel=1e-6)

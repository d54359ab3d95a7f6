"""Spread calibration: ``submit calibrate`` fits one inflation per channel, evaluation and inference
apply it to exactly the exports it was fitted for, and the ensemble mean never moves."""
import json

import numpy as np
import pytest

from cloudsr_hpc.models import calibration
from tests.conftest import run_cli
from tests.test_ensemble_scores import _evaluate, setup  # noqa: F401 - the shared module fixture

SETS = ["--set", "lpips=false", "--set", "spectrum_tile=32", "--set", "batch_size=4"]


@pytest.fixture(scope="module")
def fitted(setup, tmp_path_factory):  # noqa: F811
    d, models = setup
    out = tmp_path_factory.mktemp("cal") / "calibration.json"
    p = run_cli("calibrate", "--checkpoints", *map(str, models.values()), "--pairs", d / "val",
                "--members", "3", "--out", out, *SETS)
    assert p.returncode == 0, p.stderr[-2000:]
    return out


def test_inflation_is_one_over_spread_skill_and_makes_it_one(setup, fitted, tmp_path):  # noqa: F811
    raw, _ = _evaluate(setup, tmp_path / "raw", "--members", "3")
    cal, md = _evaluate(setup, tmp_path / "cal", "--members", "3", "--calibration", str(fitted))
    doc = json.loads(fitted.read_text())
    assert doc["format"] == calibration.FORMAT
    # bicubic and the regression are deterministic: nothing to calibrate
    assert sorted(c["method"] for c in doc["methods"]) == ["cascade", "stage1", "stage2"]
    for c in doc["methods"]:
        e_raw, e_cal = raw["ensemble"]["methods"][c["method"]], cal["ensemble"]["methods"][c["method"]]
        for ch, a in zip(c["channels"], c["inflation"], strict=True):
            assert a == pytest.approx(1 / e_raw["channels"][ch]["spread_skill"], rel=1e-9)
            # on the pairs it was fitted on, every channel's ensemble is calibrated in its second moment
            assert e_cal["channels"][ch]["spread_skill"] == pytest.approx(1.0, rel=1e-4)
            assert e_cal["channels"][ch]["spread"] == pytest.approx(a * e_raw["channels"][ch]["spread"],
                                                                    rel=1e-4)
        # the ensemble mean and member 0's single-sample row are untouched; the CRPS moves
        for key in (c["method"], c["method"] + "_ensemble_mean"):
            for k in ("psnr", "ssim", "grad"):
                assert cal["scores"][key]["overall"][k] == pytest.approx(raw["scores"][key]["overall"][k],
                                                                         rel=1e-5)
        assert e_cal["overall"]["rmse_mean"] == pytest.approx(e_raw["overall"]["rmse_mean"], rel=1e-5)
        assert e_cal["overall"]["crps"] != e_raw["overall"]["crps"]
        fitted_alpha = dict(zip(c["channels"], c["inflation"], strict=True))
        assert cal["ensemble"]["calibration"][c["method"]] == pytest.approx(fitted_alpha)
    assert "members inflated about their mean by" in md


def test_a_calibration_is_refused_for_other_models_and_single_members(setup, fitted, tmp_path):  # noqa: F811
    d, models = setup
    doc = json.loads(fitted.read_text())
    for c in doc["methods"]:
        for s in c["stages"]:
            s["sha256"] = "0" * 64  # fitted for another export
    other = tmp_path / "other.json"
    other.write_text(json.dumps(doc))
    base = ["evaluate", "--checkpoints", *map(str, models.values()), "--pairs", d / "val", *SETS]
    p = run_cli(*base, "--members", "3", "--calibration", other, "--out", tmp_path / "o")
    assert p.returncode == 2 and "fits none of" in p.stderr and str(other) in p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "o" / "metrics.md").exists()
    p = run_cli(*base, "--calibration", fitted, "--out", tmp_path / "one")
    assert p.returncode == 2 and "members >= 2" in p.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": calibration.FORMAT, "methods": [{**doc["methods"][0],
                                                                          "inflation": [-1.0]}]}))
    p = run_cli(*base, "--members", "3", "--calibration", bad, "--out", tmp_path / "b")
    assert p.returncode == 2 and "one positive number per channel" in p.stderr
    p = run_cli("calibrate", "--checkpoints", *map(str, models.values()), "--pairs", d / "val", "--members",
                "1", "--out", tmp_path / "c.json", *SETS)
    assert p.returncode == 2 and "evaluate.members" in p.stderr and not (tmp_path / "c.json").exists()


def test_fit_refuses_a_channel_without_spread():
    class Fake:
        hr_channels, stages = ["a", "b"], []
    with pytest.raises(Exception, match="channel b"):
        calibration.fit("stage2", Fake(), {"a": 0.5, "b": 0.0}, {})
    assert calibration.fit("stage2", Fake(), {"a": 0.5, "b": 2.0}, {}).inflation == [2.0, 0.5]


def test_inflate_keeps_the_mean_and_scales_the_anomalies():
    import torch
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 2, 3, 5, 5)).astype(np.float32)  # members, batch, channels, y, x
    a = np.array([1.0, 2.0, 0.5])
    y = calibration.inflate(x, a, 2)
    np.testing.assert_allclose(y.mean(0), x.mean(0), atol=1e-6)
    np.testing.assert_allclose(y.std(0), x.std(0) * a[None, :, None, None], rtol=1e-5)
    yt = calibration.inflate(torch.from_numpy(x), a, 2)
    np.testing.assert_allclose(yt.numpy(), y, rtol=1e-6, atol=1e-6)
    assert calibration.inflate(x, None, 2) is x


def test_the_demo_fits_on_train_and_scores_val_calibrated(setup, tmp_path):  # noqa: F811
    """The demo's evaluation: calibration fitted on ``train`` (never on ``val``), then ``val`` scored."""
    import shutil

    from cloudsr_hpc.demo import evaluate_held_out
    d, models = setup
    shards = tmp_path / "pairs"
    shutil.copytree(d / "val", shards / "train")
    shutil.copytree(d / "val", shards / "val")
    md = evaluate_held_out(tmp_path, "seviri_viirs", shards, 0, models,
                          ["lpips=false", "spectrum_tile=32", "batch_size=4"], members=3)
    fitted = json.loads((tmp_path / "evaluation" / "calibration.json").read_text())
    assert all(m["fitted"]["source"] == str(shards / "train") for m in fitted["methods"])
    doc = json.loads(md.with_name("metrics.json").read_text())
    assert doc["info"]["source"] == str(shards / "val")
    assert doc["info"]["spread_calibration"] == str(tmp_path / "evaluation" / "calibration.json")
    assert "members inflated about their mean by" in md.read_text()

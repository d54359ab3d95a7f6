"""Real GOES ABI imagery end to end: spatially split HR shards, a short self-supervised training that
beats bicubic on real held-out patches, night reflectance as fill (never painted), and the real-data
demo's outputs.  Uses the real files in ../shared/data/abi-real (CI has them at the same path)."""
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import xarray as xr
from conftest import ROOT, run_cli, run_train

ABI = ROOT.parent / "shared" / "data" / "abi-real"
BLOCK_HR = 64 * 4  # configs/pairs_abi.yaml: split_block_lr x scale
REFLECTANCE, IR = ["C04", "C06"], ["C08", "C09", "C10", "C16"]
STEPS = 300  # the real-data demo trains 1200 (README); the assertions hold from here on



def _patches(split_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = [], []
    for f in sorted(split_dir.glob("hr-*.h5")):
        with h5py.File(f) as h:
            rows.append(h["row"][:])
            cols.append(h["col"][:])
    return np.concatenate(rows), np.concatenate(cols)


@pytest.fixture(scope="session")
def abi_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("abi") / "pairs"
    p = run_cli("pairs", "--pair", "abi_abi", "--archive", ABI, "--out", out, "--config", "pairs_abi.yaml",
                check=True)
    return out, json.loads(p.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def abi_models(abi_shards, tmp_path_factory):
    """The regression, then Stage 2 from it, after a short CPU training on the real train blocks."""
    shards, _ = abi_shards
    out = tmp_path_factory.mktemp("abi_runs")
    models = {}
    for name, config, extra in (("regression", "configs/regression_abi.yaml", []),
                                ("stage2", "configs/stage2_abi.yaml",
                                 [f"init_from={out / 'regression' / 'export' / 'model.pt'}"])):
        p = run_train(config, shards, out / name, f"train.steps={STEPS}", f"train.ckpt_every={STEPS}",
                      f"train.val_every={STEPS}", *extra)
        assert p.returncode == 0, p.stderr[-3000:]
        models[name] = out / name / "export" / "model.pt"
    return models


def test_shards_are_split_by_space_deterministically_and_never_duplicated(abi_shards, tmp_path):
    shards, stats = abi_shards
    from cloudsr_hpc.data.pairs import split_hash
    blocks = {}
    for split in ("train", "val"):
        rows, cols = _patches(shards / split)
        assert len(rows) > 0
        # a patch lies inside one block, and the block's hash alone says its split
        assert np.array_equal(rows // BLOCK_HR, (rows + 63) // BLOCK_HR)
        assert np.array_equal(cols // BLOCK_HR, (cols + 63) // BLOCK_HR)
        blocks[split] = {(int(r) // BLOCK_HR, int(c) // BLOCK_HR) for r, c in zip(rows, cols, strict=True)}
        assert all((split_hash(*b) % 5 == 0) == (split == "val") for b in blocks[split])
    assert not blocks["train"] & blocks["val"]
    n_val = len(_patches(shards / "val")[0])
    assert 0.1 < n_val / stats["hr_patches"] < 0.35
    # re-running rewrites the same shards: the same patches, no duplicates
    again = run_cli("pairs", "--pair", "abi_abi", "--archive", ABI, "--out", shards, "--config",
                    "pairs_abi.yaml", check=True)
    assert json.loads(again.stdout.strip().splitlines()[-1])["hr_patches"] == stats["hr_patches"]
    assert sum(len(_patches(shards / s)[0]) for s in ("train", "val")) == stats["hr_patches"]


@pytest.mark.slow
def test_short_training_beats_bicubic_on_real_held_out_blocks(abi_shards, abi_models, tmp_path):
    shards, _ = abi_shards
    p = run_cli("evaluate", "--checkpoints", abi_models["stage2"], abi_models["regression"], "--pairs",
                shards / "val", "--methods", "bicubic,regression,stage2", "--out", tmp_path / "ev",
                check=True)
    res = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    ir = {m: np.mean([res["scores"][m]["channels"][c]["psnr"] for c in IR])
          for m in ("bicubic", "regression", "stage2")}
    grad = {m: np.mean([res["scores"][m]["channels"][c]["grad"] for c in IR])
            for m in ("bicubic", "regression", "stage2")}
    assert ir["regression"] > ir["bicubic"], ir  # the regression beats bicubic on real clouds
    # the diffusion model restores gradients bicubic loses, at nearly bicubic's fidelity after 300 CPU steps
    assert abs(grad["stage2"] - 1) < abs(grad["bicubic"] - 1) - 0.05, grad
    assert ir["stage2"] > ir["bicubic"] - 0.5, ir
    groups = res["scores"]["stage2"]["groups"]["brightness_temperature"]
    assert sorted(groups["channels"]) == IR and abs(groups["psnr"] - ir["stage2"]) < 1e-9
    assert "abi_abi" in p.stdout  # the pair came from the checkpoints, not the default config


NIGHT_ROWS, NIGHT_COLS = slice(600, 728), slice(1000, 1192)  # the window of the CONUS scene


def _night_scene(tmp_path: Path, rows=NIGHT_ROWS, cols=NIGHT_COLS) -> Path:
    """A window of the real CONUS scene with its reflectance bands as the reader gives them at night:
    no signal (NaN), listed in ``night_masked_channels``."""
    from cloudsr_hpc.data.readers import read_files
    from cloudsr_hpc.data.scene import make_scene, scene_grid, scene_time, write_scene
    from cloudsr_hpc.data.sensors import load_registry
    sensor = load_registry().sensor("abi")
    files = sorted(ABI.glob("OR_ABI-L1b-RadC-*_G17_*.nc"))
    ds = read_files(files, sensor, ["radc"], REFLECTANCE + IR)
    grid = scene_grid(ds).window(rows.start, cols.start, rows.stop - rows.start, cols.stop - cols.start)
    values = {c: ds[c].values[rows, cols] for c in IR}
    values.update({c: np.full(grid.shape, np.nan, np.float32) for c in REFLECTANCE})
    return write_scene(make_scene({c: values[c] for c in REFLECTANCE + IR}, sensor, scene_time(ds), grid=grid,
                                  platform="GOES-17",
                                  extra_attrs={"night_masked_channels": ";".join(REFLECTANCE)}),
                       tmp_path / "night.nc")


@pytest.mark.slow
def test_night_reflectance_is_fill_never_painted_and_ir_is_super_resolved(abi_models, tmp_path):
    """The models see a night scene (reflectance without signal): its reflectance comes out as fill
    everywhere, the brightness temperatures are super-resolved, and evaluation reports the
    reflectance as n/a and keeps it out of 'all'."""
    from cloudsr_hpc.config import load
    from cloudsr_hpc.data.sensors import load_registry
    from cloudsr_hpc.inference.mpi import Ranks
    from cloudsr_hpc.inference.pipeline import ScenePipeline
    from cloudsr_hpc.schema import InferConfig
    scene = _night_scene(tmp_path)
    cfg = load(InferConfig, "infer.yaml", ["pair=abi_abi", "stages=2",
                                           f"stage2_checkpoint={abi_models['stage2']}",
                                           "tile_lr=32", "overlap_lr=8", "chunk=128"])
    res = ScenePipeline(cfg, load_registry(), Ranks(), tmp_path / "out", progress=False).run([scene])
    with xr.open_dataset(res.path) as out:
        assert out.sizes["y"] == 512 and out.sizes["x"] == 768
        for c in REFLECTANCE:
            assert np.isnan(out[c].values).all(), f"{c}: daylight painted at night"
        for c in IR:
            v = out[c].values
            assert np.isfinite(v).all() and 180 < np.nanmean(v) < 300
    # the same scene as an HR truth, self-supervised: reflectance n/a and out of 'all'
    p = run_cli("evaluate", "--checkpoints", abi_models["stage2"], "--hr", scene, "--scale", "4",
                "--methods", "bicubic,stage2", "--out", tmp_path / "ev", "--set", "tile_lr=32", "--set",
                "overlap_lr=8", "--set", "band_rows=256", check=True)
    res = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    s2 = res["scores"]["stage2"]
    for c in REFLECTANCE:  # NaN is written as null in metrics.json
        assert s2["channels"][c]["psnr"] is None and s2["channels"][c]["grad"] is None
    assert sorted(s2["groups"]["reflectance"]["no_valid_pixel"]) == REFLECTANCE
    assert np.isfinite(s2["overall"]["psnr"])
    csv = (tmp_path / "ev" / "metrics.csv").read_text()
    assert "stage2,C04,n/a" in csv and "stage2,C06,n/a" in csv and "bicubic,C04,n/a" in csv
    assert p.returncode == 0


@pytest.mark.slow
def test_cascade_leaves_a_channel_without_input_as_fill_per_pixel(abi_models):
    """Half of a tile at night: the reflectance is fill exactly on the night half (nearest HR
    pixels of the LR night pixels), the IR bands valid everywhere."""
    from cloudsr_hpc.models.cascade import Cascade, Stage
    casc = Cascade([Stage.load(abi_models["stage2"])])
    g = torch.Generator().manual_seed(0)
    lr = torch.rand(1, 6, 16, 16, generator=g) * 0.5 - 0.25
    mask = torch.ones_like(lr)
    mask[:, :2, :, 8:] = 0  # reflectance channels: no signal in the east half
    pred, m = casc(lr * mask, mask, [(0, 0)])
    assert torch.isnan(pred[:, :2, :, 32:]).all() and torch.isfinite(pred[:, :2, :, :32]).all()
    assert torch.isfinite(pred[:, 2:]).all() and bool((m > 0).all())


def test_real_demo_with_a_box_off_the_scene_stops_before_training(abi_shards, tmp_path):
    """Another satellite's archive and the default box: one line naming the scene's extent, exit 2,
    no scene file and no training started (the scene is read before the models are trained)."""
    shards, _ = abi_shards
    out = tmp_path / "demo"
    (out / "pairs").mkdir(parents=True)
    (out / "pairs" / "abi_abi").symlink_to(shards)  # the demo keeps shards that exist
    p = run_cli("demo", "--pair", "abi_abi", "--archive", ABI, "--out", out,
                "--bbox", "-80", "30", "-70", "40")
    assert p.returncode == 2, p.stderr[-2000:]
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "does not overlap the scene (GOES-West" in errors[0], p.stderr[-2000:]
    assert not (out / "scenes").exists() or not any((out / "scenes").iterdir())
    assert not (out / "runs").exists()

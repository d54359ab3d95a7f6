import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=None, check=False):
    """Run ``python -m cloudsr_hpc.submit`` as users do, in a subprocess."""
    proc = subprocess.run([sys.executable, "-m", "cloudsr_hpc.submit", *map(str, args)], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="session")
def sv_archive(tmp_path_factory):
    """A 5-slot SEVIRI->VIIRS synthetic archive and its training shards (shared by the slow tests)."""
    import yaml
    root = tmp_path_factory.mktemp("sv")
    run_cli("synth", "--pair", "seviri_viirs", "--start", "2024-06-01T11:30", "--end", "2024-06-01T12:30",
            "--archive", root / "archive", check=True)
    out = run_cli("pairs", "--pair", "seviri_viirs", "--archive", root / "archive", "--out", root / "pairs",
                  check=True)
    return root, yaml.safe_load(out.stdout)


@pytest.fixture(scope="session")
def slurm_cluster():
    """A real one-node Slurm cluster (slurmctld, slurmd, slurmdbd + mariadb so that sacct and
    Submitit work), started by scripts/start-local-slurm.sh (idempotent; needs root)."""
    import shutil
    env = dict(os.environ, SLURM_ACCOUNTING=os.environ.get("SLURM_ACCOUNTING", "dbd"))
    p = subprocess.run(["bash", str(ROOT / "scripts" / "start-local-slurm.sh")], env=env, capture_output=True,
                       text=True, timeout=1200)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert shutil.which("sbatch") and shutil.which("sacct")
    return True


@pytest.fixture(scope="session")
def campaign_archive(tmp_path_factory):
    """Eight SEVIRI slots (11:00-12:45, LR files only) for inference campaigns."""
    root = tmp_path_factory.mktemp("campaign") / "archive"
    run_cli("synth", "--pair", "seviri_viirs", "--start", "2024-06-01T11:00", "--end", "2024-06-01T12:45",
            "--archive", root, "--lr-only", check=True)
    return root


def wait_for(pred, timeout=600, every=0.2):
    """Poll ``pred`` until it returns something true (returned) or ``timeout`` s pass (None)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = pred()
        if v:
            return v
        time.sleep(every)
    return None


def run_train(config, shards, out, *sets, port=None, timeout=1200, wait=True):
    """``python -m cloudsr_hpc.train`` in a subprocess (DeepSpeed owns the process group);
    ``wait=False`` returns the running Popen (stdout+stderr piped together)."""
    env = dict(os.environ,
               TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR", "/tmp/cloudsr_torch_ext"),
               MASTER_PORT=str(port or 29600 + (hash(str(out)) % 300)))
    cmd = [sys.executable, "-m", "cloudsr_hpc.train", "--config", str(config), "--set",
           f"data.shards={shards}", "--set", f"train.out_dir={out}"]
    for s in sets:
        cmd += ["--set", s]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


PAIR_NORM = {"lr": [[0.0, 0.0, 0.0, 200.0, 190.0], [110.0, 110.0, 110.0, 340.0, 320.0]],
             "hr": [[0.0, 0.0, 0.0, 200.0, 190.0], [110.0, 110.0, 110.0, 340.0, 320.0]]}


def make_export(out_dir, stage=1, base=8, mult=(1, 2), steps=1, seed=0, out_std=0.05, channels=5,
                lr_channels=("VIS006", "VIS008", "IR_016", "IR_039", "IR_108"),
                hr_channels=("I01", "I02", "I03", "I04", "I05"), scale=4):
    """An exported stage with random weights (a non-zero residual head, so the network matters):
    what inference needs from a checkpoint, without a training run.  Returns the model path."""
    import torch

    from cloudsr_hpc.config import to_dict
    from cloudsr_hpc.models.export import export_model
    from cloudsr_hpc.models.network import ConditionalUNet
    from cloudsr_hpc.schema import ModelConfig, StageConfig
    cfg = StageConfig(stage=stage)
    cfg.model = ModelConfig(base_channels=base, channel_mult=list(mult), num_res_blocks=1,
                            attention_levels=[])
    cfg.diffusion.steps = steps
    torch.manual_seed(seed)
    net = ConditionalUNet(channels, cfg.model)
    torch.nn.init.normal_(net.out[-1].weight, std=out_std)
    meta = {"stage": stage, "channels": channels, "scale": scale, "lr_channels": list(lr_channels)[:channels],
            "hr_channels": list(hr_channels)[:channels], "norm_hr": PAIR_NORM["hr"],
            "norm_lr": PAIR_NORM["lr"], "config": to_dict(cfg), "step": 0}
    return export_model(Path(out_dir), net.state_dict(), meta)


@pytest.fixture(scope="session")
def trained_models(sv_archive, tmp_path_factory):
    """Stage 1, Stage 2 and the regression baseline after the documented short CPU training (the
    demo's recipe: ``demo.DEMO_MODEL``, Stage 2 twice the steps), on the ``sv_archive`` shards."""
    from cloudsr_hpc.demo import DEMO_MODEL, DEMO_STEPS
    root, _ = sv_archive
    shards, out = root / "pairs", tmp_path_factory.mktemp("trained")
    runs = {}
    for name, config, extra in (("stage1", "configs/stage1.yaml", ["init_from=null"]),
                                ("stage2", "configs/stage2.yaml",
                                 [f"init_from={out / 'stage1' / 'export' / 'model.pt'}"]),
                                ("regression", "configs/regression.yaml", [])):
        steps = DEMO_STEPS * (2 if name == "stage2" else 1)
        p = run_train(config, shards, out / name, *DEMO_MODEL, f"train.steps={steps}",
                      f"train.ckpt_every={steps}", f"train.val_every={steps}", *extra)
        assert p.returncode == 0, p.stderr[-3000:]
        runs[name] = out / name / "export" / "model.pt"
    return {"shards": shards, **runs}


# ----------------------------------------------------------------------------- fixtures shared by test
# modules
# (module-scoped: each module that uses one gets its own, as when they were imported from a test module)
LR_CH = ["VIS006", "VIS008", "IR_016", "IR_039", "IR_108"]


def lr_scene(path, rows=100, cols=90, row0=0, col0=1700, smooth=2.0, seed=0):
    """A canonical SEVIRI scene on a window of the disk reaching the limb (space pixels NaN)."""
    import datetime as dt

    import numpy as np
    from scipy.ndimage import gaussian_filter

    from cloudsr_hpc.data.geometry import SEVIRI_FULL_DISK
    from cloudsr_hpc.data.scene import make_scene, write_scene
    from cloudsr_hpc.data.sensors import load_registry
    grid = SEVIRI_FULL_DISK.window(row0, col0, rows, cols)
    lon, _ = grid.lonlat()
    rng = np.random.default_rng(seed)
    vals = {}
    for i, c in enumerate(LR_CH):
        lo, hi = PAIR_NORM["lr"][0][i], PAIR_NORM["lr"][1][i]
        f = gaussian_filter(rng.standard_normal(grid.shape), smooth)
        v = lo + (hi - lo) * np.clip(0.5 + 0.25 * f / f.std(), 0.02, 0.98)
        vals[c] = np.where(np.isfinite(lon), v, np.nan).astype(np.float32)
    write_scene(make_scene(vals, load_registry().sensor("seviri"), dt.datetime(2024, 6, 1, 12), grid=grid),
                path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny random-weight exports of Stage 1, Stage 2 (T = 2 each) and the regression baseline."""
    d = tmp_path_factory.mktemp("models")
    return {"s1": make_export(d / "s1", stage=1, steps=2),
            "s2": make_export(d / "s2", stage=2, steps=2, seed=1),
            "reg": make_export(d / "reg", stage="regression", seed=2), "root": d}


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 100x90 LR SEVIRI scene reaching the limb (:func:`lr_scene`)."""
    return lr_scene(tmp_path_factory.mktemp("lr") / "lr.nc")


SHARD_ATTRS = {"pair": "seviri_viirs", "scale": 4, "lr_sensor": "seviri", "hr_sensor": "viirs",
               "lr_channels": ["IR_108", "VIS006"], "hr_channels": ["I05", "I01"],
               "norm_hr": [[190.0, 0.0], [320.0, 100.0]], "norm_lr": [[190.0, 0.0], [320.0, 100.0]]}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Tiny two-channel ``pairs`` and ``hr`` shards (train: 24 patches, val: 4) for training runs."""
    import datetime as dt

    import numpy as np
    from scipy import ndimage

    from cloudsr_hpc.data.shards import ShardWriter
    root = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("val", 4)):
        wp = ShardWriter(root / split, "pairs", 8, SHARD_ATTRS)
        wh = ShardWriter(root / split, "hr", 8, SHARD_ATTRS)
        for i in range(n):
            base = ndimage.gaussian_filter(rng.standard_normal((64, 64)), 3)
            hr = np.stack([250 + 200 * base, 40 + 150 * base]).astype(np.float32)
            lr = hr.reshape(2, 16, 4, 16, 4).mean((2, 4))
            wp.add(hr, dt.datetime(2024, 6, 1, 12), i, i, ["x"], lr=lr)
            wh.add(hr, dt.datetime(2024, 6, 1, 12), i, i, ["x"])
        wp.flush(), wh.flush()
    return root


def pytest_terminal_summary(terminalreporter):
    """One line for the fault-injection tests (marked ``fault``): injected, survived, lost."""
    reports = [r for key in ("passed", "failed", "error") for r in terminalreporter.stats.get(key, [])
               if getattr(r, "when", "") == "call" and "fault" in getattr(r, "keywords", {})]
    if reports:
        survived = sum(r.passed for r in reports)
        terminalreporter.write_line(f"faults: {len(reports)} injected, {survived} survived, "
                                    f"{len(reports) - survived} lost")

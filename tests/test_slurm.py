"""The sbatch scripts on a real one-node Slurm cluster (started here: scripts/start-local-slurm.sh)."""
import os
import subprocess
import time
from pathlib import Path

import pytest

from cloudsr_hpc.models.export import load_model
from cloudsr_hpc.training.checkpoint import read_pointer

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def slurm(slurm_cluster):
    return slurm_cluster


def _sbatch(script, out_dir, shards_dir, *extra, log):
    args = ["sbatch", "--parsable", f"--output={log}", str(ROOT / "slurm" / script),
            "--set", f"data.shards={shards_dir}", "--set", f"train.out_dir={out_dir}", "--set",
            "model.base_channels=8",
            "--set", "model.channel_mult=[1,2]", "--set", "train.batch_size=2", "--set", "init_from=null",
            *extra]
    env = dict(os.environ,
               TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR", "/tmp/cloudsr_torch_ext"))
    p = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip().split(";")[0]


def _wait(pred, timeout=600):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return True
        time.sleep(0.5)
    return False


def _state(job):
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)


def test_sbatch_train_stage1_two_ranks(slurm, shards, tmp_path):
    job = _sbatch("train_stage1.sh", tmp_path / "run", shards, "--set", "train.steps=20",
                  "--set", "train.val_every=10", "--set", "train.ckpt_every=10", log=tmp_path / "job.out")
    assert _wait(lambda: _state(job).get("JobState") in ("COMPLETED", "FAILED", "CANCELLED")), _state(job)
    log = (tmp_path / "job.out").read_text()
    assert _state(job)["JobState"] == "COMPLETED", log[-3000:]
    assert "tasks 2" in log  # one rank per task
    _, meta = load_model(tmp_path / "run" / "export" / "model.pt")
    assert meta["step"] == 20 and meta["stage"] == 1


def test_signalled_job_checkpoints_requeues_and_finishes(slurm, shards, tmp_path):
    opts = ["--set", "train.steps=600", "--set", "train.ckpt_every=50", "--set", "train.val_every=1000"]
    ref = _sbatch("train_stage2.sh", tmp_path / "ref", shards, *opts, log=tmp_path / "ref.out")
    run = tmp_path / "run"
    job = _sbatch("train_stage2.sh", run, shards, *opts, log=tmp_path / "job.out")
    assert _wait(lambda: read_pointer(run / "ckpt") is not None), (tmp_path / "job.out").read_text()[-3000:]
    # what --signal=USR1@120 sends before the limit
    subprocess.run(["scancel", "--signal=USR1", job], check=True)
    assert _wait(lambda: (run / "export" / "model.pt").exists()
                 and _state(job).get("JobState") == "COMPLETED",
                 timeout=900), (tmp_path / "job.out").read_text()[-3000:]
    log = (tmp_path / "job.out").read_text()
    assert "requeueing job" in log and "restart 1" in log
    assert "resumed from step" in log
    _, meta = load_model(run / "export" / "model.pt")
    assert meta["step"] == 600 and meta["stage"] == 2
    # 2 ranks, interrupted + requeued vs uninterrupted: the same weights (to float tolerance)
    assert _wait(lambda: _state(ref).get("JobState") == "COMPLETED"), \
        (tmp_path / "ref.out").read_text()[-3000:]
    a, _ = load_model(tmp_path / "ref" / "export" / "model.pt")
    b, _ = load_model(run / "export" / "model.pt")
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    print("max |w_ref - w_resumed| =", diff)
    assert diff < 1e-5

"""DeepSpeed training on CPU: a run completes and exports, SIGTERM checkpoints, resume is exact."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cloudsr_hpc.errors import InputError
from cloudsr_hpc.models.export import load_model
from cloudsr_hpc.training.checkpoint import read_pointer
from tests.conftest import run_train

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.base_channels=8", "model.channel_mult=[1,2]", "train.batch_size=2", "train.steps=8",
        "train.val_every=4", "train.ckpt_every=4", "init_from=null"]


def _train(shards, out, *extra, stage="1", wait=True):
    """A tiny run; ``extra`` are "--set", "key=value" pairs that override TINY."""
    assert all(flag == "--set" for flag in extra[::2])
    return run_train(f"configs/stage{stage}.yaml", shards, out, *TINY, *extra[1::2], wait=wait, timeout=900)


def test_stage1_run_exports_a_verified_checkpoint(shards, tmp_path):
    p = _train(shards, tmp_path / "run")
    assert p.returncode == 0, p.stderr[-3000:]
    state, meta = load_model(tmp_path / "run" / "export" / "model.pt")
    assert meta["channels"] == 2 and meta["stage"] == 1 and meta["step"] == 8
    assert all(torch.isfinite(v).all() for v in state.values())
    assert read_pointer(tmp_path / "run" / "ckpt") == "step00000008"
    hist = (tmp_path / "run" / "history.json").read_text()
    assert "psnr_model" in hist and "psnr_bicubic" in hist
    # a flipped byte is caught by the manifest checksum
    bad = tmp_path / "run" / "export" / "model.pt"
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(InputError, match="sha256 does not match"):
        load_model(bad)


def test_sigterm_checkpoints_and_resume_is_bitwise_equal(shards, tmp_path):
    opts = ["--set", "train.steps=300", "--set", "train.ckpt_every=50", "--set", "train.val_every=150"]
    ref = _train(shards, tmp_path / "ref", *opts)
    assert ref.returncode == 0, ref.stderr[-3000:]
    run = tmp_path / "cut"
    proc = _train(shards, run, *opts, wait=False)
    deadline = time.time() + 600
    while read_pointer(run / "ckpt") is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)  # preempt once training is under way (first checkpoint written)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 75, out[-3000:]
    stopped = int(read_pointer(run / "ckpt").replace("step", ""))
    assert 50 <= stopped < 300
    resumed = _train(shards, run, *opts)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at step {stopped}" in resumed.stderr
    a, _ = load_model(tmp_path / "ref" / "export" / "model.pt")
    b, _ = load_model(run / "export" / "model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_stage2_on_degraded_hr_and_bad_inputs(shards, tmp_path):
    p = _train(shards, tmp_path / "s2", "--set", "train.steps=4", stage="2")
    assert p.returncode == 0, p.stderr[-3000:]
    s2 = tmp_path / "s2" / "export" / "model.pt"
    assert load_model(s2)[1]["stage"] == 2
    # empty / missing shard directory
    (tmp_path / "empty" / "train").mkdir(parents=True)
    e = _train(tmp_path / "empty", tmp_path / "x")
    assert e.returncode == 2 and "no pairs-*.h5 shards" in e.stderr
    e = _train(tmp_path / "nope", tmp_path / "x")
    assert e.returncode == 2 and "shard directory does not exist" in e.stderr
    # foreign file, and a checkpoint that does not fit the configured network
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    e = _train(shards, tmp_path / "y", "--set", f"init_from={bad}")
    assert e.returncode == 2 and "no manifest.json" in e.stderr
    e = _train(shards, tmp_path / "z", "--set", f"init_from={s2}", "--set", "model.base_channels=16")
    assert e.returncode == 2 and "weights do not fit this model config" in e.stderr
    assert not (tmp_path / "z" / "export").exists()


LAUNCHERS = {
    "torchrun": lambda bin_: [str(bin_ / "torchrun"), "--nproc_per_node", "2", "--master_port", "29977",
                              "-m"],
    "mpiexec": lambda bin_: [str(bin_ / "mpiexec"), "-n", "2", str(bin_ / "python"), "-m"],
    "deepspeed": lambda bin_: [str(bin_ / "deepspeed"), "--num_gpus", "2", "--master_port", "29978",
                               "--module"],
}


@pytest.fixture(scope="module")
def two_rank_runs(shards, tmp_path_factory):
    env = dict(os.environ,
               TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR", "/tmp/cloudsr_torch_ext"),
               OMP_NUM_THREADS="1")
    bin_ = Path(sys.executable).parent
    out = {}
    for name, prefix in LAUNCHERS.items():
        run = tmp_path_factory.mktemp(name)
        cmd = prefix(bin_) + ["cloudsr_hpc.train", "--config", "configs/stage1.yaml", "--set",
                              f"data.shards={shards}",
                              "--set", f"train.out_dir={run}", "--set", "model.base_channels=8",
                              "--set", "model.channel_mult=[1,2]", "--set", "train.batch_size=2",
                              "--set", "train.steps=40", "--set", "train.val_every=40", "--set",
                              "train.zero_stage=1", "--set", "init_from=null"]
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        out[name] = (p, run)
    return out


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_two_ranks_under_each_launcher(two_rank_runs, launcher):
    import json
    p, run = two_rank_runs[launcher]
    assert p.returncode == 0, p.stderr[-3000:]
    assert "rank 1 of 2" in p.stderr and "rank 0 of 2" in p.stderr
    hist = json.loads((run / "history.json").read_text())
    first, last = np.mean([h["mse"] for h in hist[:5]]), np.mean([h["mse"] for h in hist[-5:]])
    assert last < first  # the loss falls
    _, meta = load_model(run / "export" / "model.pt")
    assert meta["step"] == 40


def test_launchers_agree(two_rank_runs):
    """Same seed, same world size: the launcher does not change the trained weights."""
    ref, _ = load_model(two_rank_runs["torchrun"][1] / "export" / "model.pt")
    for name in ("mpiexec", "deepspeed"):
        other, _ = load_model(two_rank_runs[name][1] / "export" / "model.pt")
        assert all(torch.allclose(ref[k], other[k], atol=1e-6) for k in ref), name


def test_nan_loss_stops_without_touching_the_last_good_checkpoint(shards, tmp_path):
    run = tmp_path / "run"
    ok = _train(shards, run, "--set", "train.steps=4", "--set", "train.ckpt_every=4")
    assert ok.returncode == 0
    good = (run / "ckpt" / "latest").read_text()
    # resume the finished run with a bigger step budget and an absurd learning rate: the loss blows up
    bad = _train(shards, run, "--set", "train.steps=400", "--set", "train.ckpt_every=1", "--set",
                 "train.lr=1e30", "--set", "train.grad_clip=0.0")
    assert bad.returncode == 2 and "non-finite loss" in bad.stderr, bad.stderr[-2000:]
    latest = (run / "ckpt" / "latest").read_text()
    stopped = int(latest.strip().replace("step", ""))
    # every checkpoint written is from a finite step: reload the latest and check its weights are finite
    states = run / "ckpt" / latest.strip() / "mp_rank_00_model_states.pt"
    state = torch.load(states, map_location="cpu", weights_only=True)["module"]
    assert stopped >= int(good.strip().replace("step", ""))
    assert all(torch.isfinite(v).all() for v in state.values())


def test_checkpoint_with_other_channels_is_refused(shards, tmp_path):
    from cloudsr_hpc.models.export import export_model
    path = export_model(tmp_path / "other", {"w": torch.zeros(1)}, {"channels": 3, "stage": 1})
    e = _train(shards, tmp_path / "x", "--set", f"init_from={path}")
    assert e.returncode == 2 and "checkpoint has 3 channels, config/shards have 2" in e.stderr


def test_zero2_with_gradient_accumulation(shards, tmp_path):
    p = _train(shards, tmp_path / "z2", "--set", "train.zero_stage=2", "--set", "train.grad_accum=2",
               "--set", "train.steps=10", "--set", "train.val_every=10", "--set", "train.ckpt_every=5")
    assert p.returncode == 0, p.stderr[-3000:]
    import json
    hist = json.loads((tmp_path / "z2" / "history.json").read_text())
    assert len(hist) == 10 and all(np.isfinite(h["loss"]) for h in hist)
    assert read_pointer(tmp_path / "z2" / "ckpt") == "step00000010"
    # resuming a ZeRO-2 checkpoint continues from it
    more = _train(shards, tmp_path / "z2", "--set", "train.zero_stage=2", "--set", "train.grad_accum=2",
                  "--set", "train.steps=12", "--set", "train.val_every=100", "--set", "train.ckpt_every=5")
    assert more.returncode == 0 and "at step 10" in more.stderr, more.stderr[-3000:]

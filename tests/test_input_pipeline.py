"""The training input pipeline (DataLoader + StepBatchSampler): the same batches as the previous
in-process collation whatever the number of workers, across epochs and on resume; the epoch
permutation built once; workers that survive the job's SIGTERM and stop when closed."""
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cloudsr_hpc.config import build, load
from cloudsr_hpc.data import datasets
from cloudsr_hpc.data.datasets import DegradedHRDataset, PairDataset, StepBatchSampler, rank_sampler
from cloudsr_hpc.errors import ConfigError
from cloudsr_hpc.schema import DegradationConfig, StageConfig, TrainConfig
from cloudsr_hpc.training.input import TrainInput
from cloudsr_hpc.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
# every degradation step on, so a wrong (seed, step, index) key shows in the LR
DEGRADE = DegradationConfig(noise_std=(0.01, 0.05), quantisation_levels=1024, jpeg_quality=75, seed=3)


def old_batch_indices(ds, step, micro, rank, world, seed, batch, accum):
    """``Trainer.batch_indices`` before the DataLoader (verbatim logic): the reference order."""
    per_step = batch * accum
    sampler_len = math.ceil(len(ds) / world)
    steps_per_epoch = max(1, sampler_len // per_step)
    epoch, k = divmod(step, steps_per_epoch)
    order = list(rank_sampler(ds, rank, world, seed, epoch))
    start = k * per_step + micro * batch
    return [order[(start + i) % len(order)] for i in range(batch)]


def old_collate(ds, indices, epoch):
    """``Trainer._collate`` before the DataLoader (verbatim logic, on the CPU)."""
    if hasattr(ds, "set_epoch"):
        ds.set_epoch(epoch)
    items = [ds[i] for i in indices]
    return {k: torch.stack([it[k] for it in items]) for k in ("lr", "lr_mask", "hr", "hr_mask")}


def reference(ds, train, step, micro, rank=0, world=1):
    idx = old_batch_indices(ds, step, micro, rank, world, train.seed, train.batch_size, train.grad_accum)
    return old_collate(ds, idx, step)  # the training loop degraded for epoch = step


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def train_cfg(**kw):
    # 24 patches, 4 x 2 per step: 3 steps per epoch on one rank -> steps 0..5 cross an epoch boundary
    return build(TrainConfig, {"seed": 5, "batch_size": 4, "grad_accum": 2, "steps": 6, **kw}, "train")


def drain(inp, train, start=0):
    return [inp.next(s, m) for s in range(start, train.steps) for m in range(train.grad_accum)]


@pytest.fixture(scope="module")
def hr_set(shards):
    return DegradedHRDataset(shards / "train", DEGRADE)


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_batches_equal_previous_collation_for_any_worker_count(hr_set, workers):
    train = train_cfg(num_workers=workers, prefetch_factor=2)
    hr_set[0]  # an HDF5 handle open in the training process before the workers fork
    inp = TrainInput(hr_set, train, rank=0, world=1)
    try:
        got = drain(inp, train)
    finally:
        inp.close()
    want = [reference(hr_set, train, s, m) for s in range(train.steps) for m in range(train.grad_accum)]
    assert len(got) == len(want) == 12
    for n, (g, w) in enumerate(zip(got, want, strict=True)):
        assert same(g, w), f"step {n // 2} micro {n % 2} with {workers} workers"
    # the reference is sensitive: step 3 re-draws step 0's positions of a new epoch, other samples and
    # other degradations; the same index degraded for another step gives another LR
    assert not torch.equal(want[0]["hr"], want[6]["hr"])
    assert not torch.equal(hr_set[(0, 1)]["lr"], hr_set[(0, 2)]["lr"])


def test_pairs_two_ranks_and_trainer_batch_indices(shards):
    """Stage 1 (real pairs), rank 1 of 2: the loader and ``Trainer.batch_indices`` keep the order."""
    ds = PairDataset(shards / "train")
    train = train_cfg(steps=5)
    inp = TrainInput(ds, train, rank=1, world=2)
    got = drain(inp, train)
    inp.close()
    want = [reference(ds, train, s, m, rank=1, world=2) for s in range(5) for m in range(2)]
    assert all(same(g, w) for g, w in zip(got, want, strict=True))
    fake = SimpleNamespace(train_set=ds, cfg=SimpleNamespace(train=train),
                           dist=SimpleNamespace(rank=1, world=2))
    for s in range(5):
        for m in range(2):
            assert Trainer.batch_indices(fake, s, m) == old_batch_indices(ds, s, m, 1, 2, 5, 4, 2)


def test_permutation_built_once_per_epoch(monkeypatch):
    calls = []
    real = datasets.rank_sampler

    def counting(*a, **kw):
        calls.append(a[4] if len(a) > 4 else kw.get("epoch"))
        return real(*a, **kw)

    monkeypatch.setattr(datasets, "rank_sampler", counting)
    s = StepBatchSampler(24, rank=0, world=1, seed=5, batch_size=4, grad_accum=2, start=0, stop=8)
    batches = list(s)
    assert len(batches) == len(s) == 16 and all(len(b) == 4 for b in batches)
    assert calls == [0, 1, 2] and s.orders_built == 3  # 8 steps of 3 per epoch: epochs 0, 1, 2
    assert [step for _, step in batches[7]] == [3] * 4  # keys carry their step
    # and it is the DistributedSampler order of each epoch, once per epoch
    assert [i for i, _ in batches[6]] == list(real(range(24), 0, 1, 5, 1))[:4]


def test_resume_at_step_k_gives_the_same_batches(hr_set):
    train = train_cfg(num_workers=0)
    fresh = TrainInput(hr_set, train, rank=0, world=1)
    full = drain(fresh, train)
    fresh.close()
    k = 4  # past the epoch boundary at step 3
    resumed = TrainInput(hr_set, train_cfg(num_workers=2), rank=0, world=1, start=k)
    try:
        tail = drain(resumed, train, start=k)
    finally:
        resumed.close()
    assert all(same(a, b) for a, b in zip(tail, full[2 * k:], strict=True)) and len(tail) == 4
    # a loader asked out of order (the step moved under it) reopens there: same batch
    jump = TrainInput(hr_set, train, rank=0, world=1, start=0)
    assert same(jump.next(5, 1), full[11]) and same(jump.next(2, 0), full[4])
    jump.close()


def test_bad_worker_count_names_the_key():
    with pytest.raises(ConfigError, match=r"train\.num_workers = -1"):
        load(StageConfig, ROOT / "configs" / "stage2.yaml",
             ["train.num_workers=-1"])
    with pytest.raises(ConfigError, match=r"train\.prefetch_factor"):
        load(StageConfig, ROOT / "configs" / "stage2.yaml",
             ["train.prefetch_factor=0"])


CHILD = textwrap.dedent("""
    import signal, sys, time, torch
    from cloudsr_hpc.config import build
    from cloudsr_hpc.data.datasets import DegradedHRDataset
    from cloudsr_hpc.schema import DegradationConfig, TrainConfig
    from cloudsr_hpc.training.input import TrainInput
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    ds = DegradedHRDataset(sys.argv[1], DegradationConfig(seed=3))
    train = build(TrainConfig, {"batch_size": 4, "steps": 6, "num_workers": 2}, "train")
    ref = TrainInput(ds, build(TrainConfig, {"batch_size": 4, "steps": 6}, "train"), 0, 1)
    want = [ref.next(s, 0) for s in range(6)]
    inp = TrainInput(ds, train, 0, 1)
    got = [inp.next(0, 0)]
    workers = inp._it._workers
    print("PIDS", *[w.pid for w in workers], flush=True)
    t0 = time.time()
    while not stop and time.time() - t0 < 60:
        time.sleep(0.05)
    time.sleep(0.5)  # the job's SIGTERM reached the workers too: they must still serve
    got += [inp.next(s, 0) for s in range(1, 6)]
    ok = all(torch.equal(g[k], w[k]) for g, w in zip(got, want) for k in g)
    inp.close()
    print("EQUAL", ok, "ALIVE", sum(w.is_alive() for w in workers), flush=True)
    sys.exit(75)
""")


def test_workers_survive_the_job_sigterm_and_stop_on_close(shards, tmp_path):
    """Slurm signals every process of the job: the training process must still get its batches up
    to the checkpoint, and closing the loader ends the workers (no hang on exit)."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.Popen([sys.executable, str(script), str(shards / "train")], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("PIDS"), proc.stderr.read()[-2000:]
    pids = [int(p) for p in line.split()[1:]]
    assert len(pids) == 2
    for pid in [proc.pid, *pids]:  # like scancel / a preemption: every process of the step
        os.kill(pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err[-2000:]
    assert "EQUAL True ALIVE 0" in out, out + err[-2000:]
    time.sleep(0.2)
    for pid in pids:  # reaped, not left behind
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

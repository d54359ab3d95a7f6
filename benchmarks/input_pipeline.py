"""Training input throughput vs what the model step consumes, for one rank.

Input side alone: the training DataLoader (``cloudsr_hpc.training.input``: StepBatchSampler, HDF5
reads, Stage 2's on-the-fly degradation, collation) with 0, 1, 2 worker processes, in samples/s,
over synthetic gzip ``hr`` shards of the config's patch size (or the real shards: ``--shards DIR``).
Model side: (a) the measured samples/s of a training step of the config on this machine (one
fixed batch, so no input cost in it) and (b) the *estimated* samples/s of a GPU: FLOPs of the
network's forward+backward at the config's batch and patch size (torch's FlopCounterMode, on the
meta device) / (40 % of the device peak; H100/H200 bf16 dense 989 TFLOP/s, ``--peak-tflops``).
The ratio input samples/s / GPU samples/s should be >= 3 for the GPU not to wait on input.

    python benchmarks/input_pipeline.py [--config configs/stage2.yaml] [--shards DIR]
        [--workers 0,1,2] [--batches 12] [--model-steps 2] [--peak-tflops 989]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

from cloudsr_hpc.config import load, read_yaml  # noqa: E402
from cloudsr_hpc.schema import PairsConfig, StageConfig  # noqa: E402

PEAK_TFLOPS = 989.0  # H100 / H200 SXM, bf16 dense
UTILISATION = 0.40   # assumed share of the peak a training step reaches


def make_hr_shards(root: Path, n: int, patch_hr: int, channels: int, scale: int) -> None:
    """``n`` HR patches in gzip ``hr`` shards (as ``submit pairs`` writes them): smooth fields plus
    a little noise, so that compression works about as on imagery."""
    import datetime as dt

    from cloudsr_hpc.data.shards import ShardWriter
    attrs = {"pair": "bench", "scale": scale, "lr_sensor": "seviri", "hr_sensor": "viirs",
             "lr_channels": [f"c{i}" for i in range(channels)],
             "hr_channels": [f"c{i}" for i in range(channels)],
             "norm_hr": [[0.0] * channels, [1.0] * channels], "norm_lr": [[0.0] * channels, [1.0] * channels]}
    pc = PairsConfig()
    rng = np.random.default_rng(0)
    w = ShardWriter(root / "train", "hr", pc.shard_size, attrs, compression=pc.compression,
                    level=pc.compression_level)
    k = 8
    for i in range(n):
        coarse = rng.random((channels, patch_hr // k, patch_hr // k), dtype=np.float32)
        hr = np.repeat(np.repeat(coarse, k, 1), k, 2) + 0.01 * rng.standard_normal(
            (channels, patch_hr, patch_hr), dtype=np.float32)
        w.add(hr, dt.datetime(2024, 1, 1), i, 0, [])
    w.flush()


def input_rate(dataset, cfg: StageConfig, workers: int, batches: int) -> dict:
    """samples/s of the training loader with ``workers`` processes (first batch timed apart: start-up)."""
    from cloudsr_hpc.training.input import TrainInput
    t = cfg.train
    train = dataclasses.replace(t, num_workers=workers, steps=batches + 1, grad_accum=1)
    t0 = time.perf_counter()
    inp = TrainInput(dataset, train, rank=0, world=1)
    try:
        inp.next(0, 0)
        first = time.perf_counter() - t0
        t1 = time.perf_counter()
        for s in range(1, batches + 1):
            inp.next(s, 0)
        sec = time.perf_counter() - t1
    finally:
        inp.close()
    return {"workers": workers, "samples_per_s": round(batches * t.batch_size / sec, 1),
            "first_batch_s": round(first, 3), "batches": batches}


def step_flops(cfg: StageConfig, channels: int, patch: int) -> int:
    """FLOPs of the network's forward + backward for one micro-batch (meta tensors: nothing runs;
    with ``train.activation_checkpointing`` the recomputed forward is included, as a GPU runs it)."""
    from torch.utils.flop_counter import FlopCounterMode

    from cloudsr_hpc.models.backbones import build_model
    b = cfg.train.batch_size
    with torch.device("meta"):
        model = build_model(channels, cfg.model)
        if cfg.train.activation_checkpointing and hasattr(model, "activation_checkpointing"):
            model.activation_checkpointing = True
        model.train()
        x = torch.randn(b, channels, patch, patch)
        y = torch.randn(b, channels, patch, patch)
        m = torch.ones(b, 1, patch, patch)
        t = torch.ones(b, dtype=torch.long)
        with FlopCounterMode(display=False) as fc:
            model(x, y, t, m).float().square().mean().backward()
    return int(fc.get_total_flops())


class _FixedBatch:
    """Stands in for the trainer's input loader: the same batch every step (model time only)."""

    def __init__(self, batch):
        self.batch = batch

    def next(self, step, micro):
        return self.batch

    def close(self):
        pass


def model_rate(cfg: StageConfig, shards: Path, out_dir: Path, steps: int) -> dict:
    """samples/s of ``Trainer.train_step`` of the config on this machine, on a fixed batch."""
    from cloudsr_hpc.config import build, to_dict
    from cloudsr_hpc.training.distributed import init_distributed
    from cloudsr_hpc.training.trainer import Trainer
    d = to_dict(cfg)
    d["data"]["shards"] = str(shards)
    d["train"].update({"out_dir": str(out_dir), "steps": steps + 1, "num_workers": 0})
    d["init_from"] = None
    dist = init_distributed()
    if dist.device.type != "cuda":
        d["train"]["compile"] = False  # torch.compile is a GPU option (minutes to build on a CPU)
    tr = Trainer(build(StageConfig, d), dist)
    batch = tr._input().next(0, 0)
    tr.close_input()
    tr._train_input = _FixedBatch(batch)
    tr.train_step()  # warm-up
    if dist.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        tr.train_step()
    if dist.device.type == "cuda":
        torch.cuda.synchronize()
    sec = (time.perf_counter() - t0) / steps
    b = cfg.train.batch_size * cfg.train.grad_accum
    return {"device": str(dist.device), "precision": tr._precision(), "s_per_step": round(sec, 3),
            "samples_per_s": round(b / sec, 2), "steps": steps,
            "params_m": round(sum(p.numel() for p in tr.engine.module.parameters()) / 1e6, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/stage2.yaml")
    ap.add_argument("--shards", help="a directory of real hr-*.h5 shards (or its parent with train/)")
    ap.add_argument("--patch-hr", type=int, help="HR patch side of the synthetic shards "
                    "(default: configs/pairs.yaml patch_lr x the pair's scale)")
    ap.add_argument("--samples", type=int, default=128, help="synthetic shard size")
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--batches", type=int, default=12, help="timed batches per worker count")
    ap.add_argument("--model-steps", type=int, default=2, help="timed training steps (0: skip)")
    ap.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS)
    ap.add_argument("--out", default="benchmarks/results/input_pipeline.json")
    args = ap.parse_args()
    from cloudsr_hpc.data.datasets import DegradedHRDataset
    from cloudsr_hpc.data.sensors import load_registry
    cfg = load(StageConfig, args.config, ["init_from=null"])
    pair = load_registry().pair(cfg.data.pair)
    with tempfile.TemporaryDirectory() as tmp:
        if args.shards and (Path(args.shards) / "train").is_dir():
            root = Path(args.shards)
        elif args.shards:  # a flat directory of hr-*.h5: seen as <root>/train
            root = Path(tmp) / "real"
            root.mkdir()
            (root / "train").symlink_to(Path(args.shards).resolve())
        else:
            patch = args.patch_hr or int(read_yaml("configs/pairs.yaml").get("pairs", {}).get(
                "patch_lr", PairsConfig().patch_lr)) * pair.scale
            root = Path(tmp) / "shards"
            make_hr_shards(root, args.samples, patch, len(pair.hr_channels), pair.scale)
        ds = DegradedHRDataset(root / "train", cfg.data.degradation)
        patch = int(ds[0]["hr"].shape[-1])
        channels = len(ds.attrs["hr_channels"])
        res: dict = {"config": args.config, "batch": cfg.train.batch_size, "patch_hr": patch,
                     "channels": channels, "shards": args.shards or f"synthetic gzip, {len(ds)} patches",
                     "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "input": []}
        for w in (int(x) for x in args.workers.split(",")):
            res["input"].append(input_rate(ds, cfg, w, args.batches))
        flops = step_flops(cfg, channels, patch)
        peak = args.peak_tflops * 1e12
        gpu_s = flops / (UTILISATION * peak)
        res["gpu_estimate"] = {"estimated": True, "gflop_per_step": round(flops / 1e9, 1),
                               "peak_tflops": args.peak_tflops, "utilisation": UTILISATION,
                               "s_per_step": round(gpu_s, 5),
                               "samples_per_s": round(cfg.train.batch_size / gpu_s, 1)}
        if args.model_steps > 0:
            os.environ.setdefault("TORCH_EXTENSIONS_DIR", "/tmp/cloudsr_torch_ext")
            res["model_step"] = model_rate(cfg, root, Path(tmp) / "run", args.model_steps)
    gpu_sps = res["gpu_estimate"]["samples_per_s"]
    best = max(r["samples_per_s"] for r in res["input"])
    for r in res["input"]:
        r["ratio_to_gpu_estimate"] = round(r["samples_per_s"] / gpu_sps, 3)
        if "model_step" in res:
            r["ratio_to_model_step"] = round(r["samples_per_s"] / res["model_step"]["samples_per_s"], 2)
    res["ratio_best_input_to_gpu_estimate"] = round(best / gpu_sps, 3)
    res["goal_ratio"] = 3.0
    print(f"\n{args.config}: batch {res['batch']}, patch {patch}, {channels} channels, "
          f"{res['cpu_cores']} CPU cores")
    print(f"{'input pipeline':<34}{'samples/s':>11}{'/ GPU est.':>12}{'/ model step':>14}")
    for r in res["input"]:
        print(f"{'  DataLoader, ' + str(r['workers']) + ' workers':<34}{r['samples_per_s']:>11.1f}"
              f"{r['ratio_to_gpu_estimate']:>12.3f}{r.get('ratio_to_model_step', float('nan')):>14.2f}")
    if "model_step" in res:
        ms = res["model_step"]
        print(f"{'model step (measured, ' + ms['device'] + ')':<34}{ms['samples_per_s']:>11.2f}"
              f"   ({ms['s_per_step']} s/step, {ms['params_m']} M params)")
    g = res["gpu_estimate"]
    print(f"{'GPU step (ESTIMATED from FLOPs)':<34}{g['samples_per_s']:>11.1f}   ({g['gflop_per_step']} "
          f"GFLOP/step at {int(UTILISATION * 100)} % of {args.peak_tflops:g} TFLOP/s)")
    print(f"input / GPU estimate (best): {res['ratio_best_input_to_gpu_estimate']}  (goal >= 3)\n")
    save(res, args.out)


if __name__ == "__main__":
    main()

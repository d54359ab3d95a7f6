"""Training throughput of one rank: samples/s and s/iter for a model config, and on a GPU the
model FLOPs utilisation (FLOPs of forward+backward counted by torch's FlopCounterMode).

    python benchmarks/train_throughput.py [--base 32 --mult 1,2,2 --batch 8 --patch-hr 128 --steps 10]
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

from cloudsr_hpc.config import build  # noqa: E402
from cloudsr_hpc.data.shards import ShardWriter  # noqa: E402
from cloudsr_hpc.schema import StageConfig  # noqa: E402

PEAK_FLOPS = {"bf16": 989e12, "fp32": 67e12}  # H100 SXM dense; override with --peak-tflops


def make_shards(root: Path, n: int, patch_hr: int, channels: int) -> None:
    attrs = {"pair": "bench", "scale": 4, "lr_sensor": "seviri", "hr_sensor": "viirs",
             "lr_channels": [f"c{i}" for i in range(channels)],
             "hr_channels": [f"c{i}" for i in range(channels)],
             "norm_hr": [[0.0] * channels, [1.0] * channels], "norm_lr": [[0.0] * channels, [1.0] * channels]}
    rng = np.random.default_rng(0)
    w = ShardWriter(root / "train", "pairs", 64, attrs, compression="none")
    for i in range(n):
        hr = rng.random((channels, patch_hr, patch_hr), dtype=np.float32)
        w.add(hr, dt.datetime(2024, 1, 1), i, 0, [],
              lr=hr.reshape(channels, patch_hr // 4, 4, patch_hr // 4, 4).mean((2, 4)))
    w.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--base", type=int, default=32)
    ap.add_argument("--mult", default="1,2,2")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--patch-hr", type=int, default=128)
    ap.add_argument("--channels", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--peak-tflops", type=float)
    ap.add_argument("--out", default="benchmarks/results/train_throughput.json")
    args = ap.parse_args()
    from cloudsr_hpc.training.distributed import init_distributed
    from cloudsr_hpc.training.trainer import Trainer
    with tempfile.TemporaryDirectory() as tmp:
        make_shards(Path(tmp), max(64, args.batch * 4), args.patch_hr, args.channels)
        cfg = build(StageConfig, {"stage": 1, "data": {"shards": tmp},
                                  "model": {"base_channels": args.base,
                                            "channel_mult": [int(m) for m in args.mult.split(",")]},
                                  "train": {"batch_size": args.batch, "steps": args.steps + 3,
                                            "precision": args.precision, "out_dir": str(Path(tmp) / "run")}})
        dist = init_distributed()
        tr = Trainer(cfg, dist)
        params = sum(p.numel() for p in tr.engine.module.parameters())
        for _ in range(3):  # warm-up (allocator, kernels)
            tr.train_step()
        flops = None
        try:
            from torch.utils.flop_counter import FlopCounterMode
            with FlopCounterMode(display=False) as fc:
                tr.train_step()
            flops = fc.get_total_flops()
        except Exception:  # noqa: BLE001 - FLOP counting is best effort
            pass
        if dist.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            tr.train_step()
        if dist.device.type == "cuda":
            torch.cuda.synchronize()
        sec = (time.perf_counter() - t0) / args.steps
    prec = tr._precision()
    res = {"device": str(dist.device), "precision": prec, "params_m": round(params / 1e6, 2),
           "batch": args.batch, "patch_hr": args.patch_hr, "channels": args.channels,
           "s_per_iter": round(sec, 4), "samples_per_s": round(args.batch / sec, 2),
           "gflop_per_step": round(flops / 1e9, 1) if flops else None}
    if flops and dist.device.type == "cuda":
        peak = (args.peak_tflops * 1e12) if args.peak_tflops else PEAK_FLOPS[prec]
        res["mfu"] = round(flops / sec / peak, 4)
    res["torch"] = torch.__version__
    res["threads"] = torch.get_num_threads()
    save(res, args.out)


if __name__ == "__main__":
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", "/tmp/cloudsr_torch_ext")
    main()

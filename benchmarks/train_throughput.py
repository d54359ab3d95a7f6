"""Training throughput of one rank: parameters, FLOPs per step, samples/s, s/iter and the model FLOPs
utilisation (MFU) for a model config.

FLOPs per step: the network's forward + backward for one optimizer step (batch x grad_accum samples),
counted by torch's FlopCounterMode on an eager copy of the network (no recomputation from activation
checkpointing, no torch.compile: the model's FLOPs, as MFU counts them).  MFU = FLOPs/step / (s/iter)
/ device peak; the peak comes from the device name (H100/H200: 989 TFLOP/s bf16 dense, 67 fp32;
A100: 312 / 19.5) or ``--peak-tflops``; on a CPU, or a GPU not in the table, MFU is null unless
``--peak-tflops`` is given.

    python benchmarks/train_throughput.py [--base 32 --mult 1,2,2 --batch 8 --patch-hr 128 --steps 10]
    python benchmarks/train_throughput.py --config configs/stage2_large.yaml --batch 16 --precision bf16
    python benchmarks/train_throughput.py --config configs/stage2_large.yaml --set train.compile=false

With ``--config`` the ``model`` and ``train`` sections come from that stage YAML (``--base``/``--mult``,
``--batch``, ``--precision`` and ``--set train.X=...`` override them); the data are synthetic Stage-1
pairs either way (Stage 2 runs the same network).
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

from cloudsr_hpc.config import apply_overrides, build, read_yaml  # noqa: E402
from cloudsr_hpc.data.shards import ShardWriter  # noqa: E402
from cloudsr_hpc.schema import StageConfig  # noqa: E402

# dense peak FLOP/s by precision, keyed by a substring of torch.cuda.get_device_name()
PEAK_FLOPS = {"H100": {"bf16": 989e12, "fp32": 67e12}, "H200": {"bf16": 989e12, "fp32": 67e12},
              "A100": {"bf16": 312e12, "fp32": 19.5e12}}
WARMUP = 3  # steps before timing (allocator, kernels, torch.compile)


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


def peak_flops(device: torch.device, precision: str,
               override_tflops: float | None) -> tuple[float | None, str]:
    """(peak FLOP/s, where it came from); (None, why) where unknown."""
    if override_tflops:
        return override_tflops * 1e12, "--peak-tflops"
    if device.type != "cuda":
        return None, f"no peak for {device.type} (give --peak-tflops)"
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_FLOPS.items():
        if key in name:
            return peaks[precision], f"table: {key} {precision} dense"
    return None, f"{name} not in the peak table (give --peak-tflops)"


def count_flops(tr, batch: int, patch_hr: int) -> int:
    """Forward + backward FLOPs of the network for one micro-batch, on an eager copy of it."""
    from torch.utils.flop_counter import FlopCounterMode

    from cloudsr_hpc.models.backbones import build_model
    dev = tr.dist.device
    dtype = next(tr.engine.module.parameters()).dtype
    net = build_model(tr.channels, tr.cfg.model).to(dev, dtype).train()
    c = tr.channels
    x, y = (torch.randn(batch, c, patch_hr, patch_hr, device=dev, dtype=dtype) for _ in range(2))
    mask = torch.ones(batch, 1, patch_hr, patch_hr, device=dev, dtype=dtype)
    t = torch.ones(batch, dtype=torch.long, device=dev)
    with FlopCounterMode(display=False) as fc:
        net(x, y, t, mask).float().square().mean().backward()
    del net
    return fc.get_total_flops()


def stage_config(args, tmp: str) -> StageConfig:
    src = read_yaml(args.config) if args.config else {}
    model, train = dict(src.get("model") or {}), dict(src.get("train") or {})
    if args.base is not None or not args.config:
        model["base_channels"] = args.base if args.base is not None else 32
    if args.mult is not None or not args.config:
        model["channel_mult"] = [int(m) for m in (args.mult or "1,2,2").split(",")]
    train.setdefault("batch_size", 8)
    if args.batch is not None:
        train["batch_size"] = args.batch
    if args.precision is not None or "precision" not in train:
        train["precision"] = args.precision or "auto"
    train.update({"steps": WARMUP + args.steps, "out_dir": str(Path(tmp) / "run"),
                  "val_every": 10 ** 6, "ckpt_every": 10 ** 6})
    data = apply_overrides({"stage": 1, "data": {"shards": tmp}, "model": model, "train": train}, args.set)
    return build(StageConfig, data, where=args.config or "train_throughput")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="stage YAML whose model and train sections are benchmarked")
    ap.add_argument("--base", type=int, help="model.base_channels (default 32, or the config's)")
    ap.add_argument("--mult", help="model.channel_mult, e.g. 1,2,2 (default 1,2,2, or the config's)")
    ap.add_argument("--batch", type=int, help="micro-batch per rank (default 8, or the config's)")
    ap.add_argument("--patch-hr", type=int, default=128)
    ap.add_argument("--channels", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10, help=f"timed steps (after {WARMUP} warm-up steps)")
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                    help="train.precision (default auto, or the config's)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. train.compile=false")
    ap.add_argument("--peak-tflops", type=float, help="device peak TFLOP/s for the MFU")
    ap.add_argument("--out", default="benchmarks/results/train_throughput.json")
    args = ap.parse_args()
    from cloudsr_hpc.training.distributed import init_distributed
    from cloudsr_hpc.training.trainer import Trainer
    with tempfile.TemporaryDirectory() as tmp:
        cfg = stage_config(args, tmp)
        t = cfg.train
        make_shards(Path(tmp), max(64, t.batch_size * t.grad_accum * 4), args.patch_hr, args.channels)
        dist = init_distributed()
        cuda = dist.device.type == "cuda"
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        t_build = time.perf_counter()
        tr = Trainer(cfg, dist)
        params = sum(p.numel() for p in tr.engine.module.parameters())
        build_s = time.perf_counter() - t_build
        flops = None
        try:
            flops = count_flops(tr, t.batch_size, args.patch_hr) * t.grad_accum
        except Exception as e:  # noqa: BLE001 - FLOP counting is best effort
            print(f"FLOP count failed: {e}", file=sys.stderr)
        if cuda:
            torch.cuda.empty_cache()
        sync()
        t0 = time.perf_counter()
        for _ in range(WARMUP):  # allocator, kernels, torch.compile
            tr.train_step()
        sync()
        warmup_s = time.perf_counter() - t0
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            parts = tr.train_step()
        sync()
        sec = (time.perf_counter() - t0) / args.steps
        if hasattr(tr, "close_input"):
            tr.close_input()
    prec = tr._precision()
    peak, peak_source = peak_flops(dist.device, prec, args.peak_tflops)
    samples = t.batch_size * t.grad_accum
    res = {"config": args.config, "device": str(dist.device),
           "device_name": torch.cuda.get_device_name(dist.device) if cuda else "cpu",
           "precision": prec, "params": params, "params_m": round(params / 1e6, 2),
           "model": {"base_channels": cfg.model.base_channels, "channel_mult": cfg.model.channel_mult,
                     "num_res_blocks": cfg.model.num_res_blocks,
                     "attention_levels": cfg.model.attention_levels},
           "train": {"zero_stage": t.zero_stage, "grad_accum": t.grad_accum,
                     "activation_checkpointing": t.activation_checkpointing,
                     "fused_adamw": t.fused_adamw and cuda, "compile": t.compile},
           "batch": t.batch_size, "patch_hr": args.patch_hr, "channels": args.channels,
           "timed_steps": args.steps, "build_s": round(build_s, 2), "warmup_s": round(warmup_s, 2),
           "s_per_iter": round(sec, 4), "samples_per_s": round(samples / sec, 2),
           "flops_per_step": flops, "gflop_per_step": round(flops / 1e9, 1) if flops else None,
           "achieved_tflops": round(flops / sec / 1e12, 3) if flops else None,
           "peak_tflops": peak / 1e12 if peak else None, "peak_source": peak_source,
           "mfu": round(flops / sec / peak, 4) if flops and peak else None,
           "last_loss": round(parts["loss"], 6),
           "max_memory_allocated_mb": round(torch.cuda.max_memory_allocated() / 2 ** 20, 1) if cuda else None,
           "torch": torch.__version__, "threads": torch.get_num_threads()}
    save(res, args.out)


if __name__ == "__main__":
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", "/tmp/cloudsr_torch_ext")
    main()

"""Perception against distortion on held-out real patches: how much PSNR a sample pays for its texture.

    python benchmarks/perception_distortion.py --runs demo_abi/runs --pairs demo_abi/pairs/abi_abi/val \
        [--members 8 --alphas 0 0.5 1 1.5 2 3] [--out benchmarks/results/perception_distortion.json]

A super-resolver's output can only be as sharp as the truth (gradient ratio ~1) by adding the fine
structure the LR does not determine, and structure in the wrong place costs squared error.  This
measures the trade-off the models here can reach, on the brightness-temperature bands (PSNR and
Sobel gradient ratio per channel, then their mean, as ``submit evaluate`` reports them):

- ``bicubic``, the ``regression`` (trained for the mean: the best pixel-wise estimate here);
- the Stage 2 ensemble of ``--members``: its mean (alpha 0, an estimate of the posterior mean) and
  ``mean + alpha (member - mean)`` for each ``--alphas`` (alpha 1 = a member as sampled, alpha > 1 =
  more texture), member by member, averaged over the members;
- ``regression + alpha (member - mean)``: the sampled texture on the regression's mean.

Each row is one point of the frontier: what PSNR a method keeps at the gradient ratio it reaches.
The JSON also carries the bicubic + 1 dB / gradient 0.9 corner of issue 10's goal for comparison.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from common import save  # noqa: E402


class Sums:
    """Per-channel squared-error, pixel-count and Sobel-gradient sums of one output."""

    def __init__(self):
        self.sq = self.n = self.gp = self.gt = 0

    def add(self, pred, hr, mask):
        from cloudsr_hpc.models.fidelity import gradient_sums, squared_error_sums
        sq, n = squared_error_sums(pred, hr, mask)
        gp, gt = gradient_sums(pred, hr, mask)
        self.sq, self.n, self.gp, self.gt = self.sq + sq, self.n + n, self.gp + gp, self.gt + gt

    def scores(self, channels: list[int]) -> dict:
        from cloudsr_hpc.models.fidelity import psnr_from
        psnr = psnr_from(self.sq, self.n)[channels]
        grad = (self.gp / self.gt)[channels]
        return {"psnr_ir": round(float(psnr.mean()), 3), "grad_ir": round(float(grad.mean()), 3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", required=True,
                    help="a directory with regression/ and stage2/ runs (their export/model.pt)")
    ap.add_argument("--pairs", required=True, help="held-out hr shards (e.g. DIR/pairs/abi_abi/val)")
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.5, 1.0, 1.5, 2.0, 3.0])
    ap.add_argument("--max-pairs", type=int, default=0, help="0 = all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/perception_distortion.json"))
    args = ap.parse_args(argv)

    from cloudsr_hpc.config import load
    from cloudsr_hpc.data.sensors import load_registry
    from cloudsr_hpc.evaluation.protocol import (
        Bicubic,
        _hr_quantities,
        held_out_dataset,
        load_methods,
        renorm,
    )
    from cloudsr_hpc.schema import EvaluateConfig
    runs = Path(args.runs)
    cfg = load(EvaluateConfig, "evaluate.yaml", [
        f"pairs={args.pairs}", "methods=[regression,stage2]", f"seed={args.seed}",
        f"regression_checkpoint={runs / 'regression/export/model.pt'}",
        f"stage2_checkpoint={runs / 'stage2/export/model.pt'}"])
    methods, _ = load_methods(cfg)
    val = held_out_dataset(cfg, methods)
    chans = list(val.attrs["hr_channels"])
    quantities, _ = _hr_quantities(load_registry(), val.attrs["pair"], chans)
    ir = [i for i, q in enumerate(quantities) if q == "brightness_temperature"]
    norm_lr, norm_hr = (val.lo_lr, val.hi_lr), (val.lo, val.hi)
    reg, s2 = methods["regression"], methods["stage2"]
    bic = Bicubic(val.scale, norm_hr, s2.lr_channels, chans)
    n = min(len(val), args.max_pairs) if args.max_pairs else len(val)
    rows: dict[str, Sums] = {}

    def add(name, pred, hr, mask):
        rows.setdefault(name, Sums()).add(pred.nan_to_num(), hr, mask * pred.isfinite())

    t0 = time.perf_counter()
    for start in range(0, n, cfg.batch_size):
        idx = list(range(start, min(n, start + cfg.batch_size)))
        b = {k: torch.stack([val[i][k] for i in idx]) for k in ("lr", "lr_mask", "hr", "hr_mask")}
        origins = [(i * 1000, 0) for i in idx]  # as submit evaluate: the same noise per pair

        def run(meth, member=0, b=b, origins=origins):
            x = renorm(b["lr"], norm_lr, meth.input_norm()) * b["lr_mask"]
            pred, m = meth(x, b["lr_mask"], origins, member=member)
            return renorm(pred, meth.output_norm(), norm_hr), m * b["hr_mask"]

        pb, mask = run(bic)
        add("bicubic", pb, b["hr"], mask)
        pr, _ = run(reg)
        add("regression", pr, b["hr"], mask)
        members = torch.stack([run(s2, k)[0] for k in range(args.members)])
        mean = members.mean(0)
        add("stage2 ensemble mean (alpha 0)", mean, b["hr"], mask)
        for a in args.alphas:
            for k in range(args.members):  # every member scored: the mean over members is the row
                add(f"stage2 mean + {a:g} (member - mean)", mean + a * (members[k] - mean), b["hr"], mask)
                add(f"regression + {a:g} (member - mean)", pr + a * (members[k] - mean), b["hr"], mask)
        print(f"{idx[-1] + 1}/{n} pairs, {time.perf_counter() - t0:.0f} s", flush=True)

    scores = {name: s.scores(ir) for name, s in rows.items()}
    base = scores["bicubic"]["psnr_ir"]
    for s in scores.values():
        s["psnr_minus_bicubic"] = round(s["psnr_ir"] - base, 3)
    print(f"{'output':44s} {'PSNR IR':>8s} {'- bicubic':>9s} {'grad IR':>8s}")
    for name, s in scores.items():
        print(f"{name:44s} {s['psnr_ir']:8.3f} {s['psnr_minus_bicubic']:+9.3f} {s['grad_ir']:8.3f}")
    save({"pairs": str(args.pairs), "n_pairs": n, "members": args.members,
          "ir_channels": [chans[i] for i in ir],
          "runs": str(runs), "seed": args.seed, "goal": {"psnr_minus_bicubic": 1.0, "grad_ir": [0.9, 1.1]},
          "scores": scores, "wall_s": round(time.perf_counter() - t0, 1)}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

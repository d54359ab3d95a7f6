"""Score super-resolution methods under one protocol and write the paper-style table and plots.

    python -m cloudsr_hpc.evaluate --config configs/evaluate.yaml [--hr SCENE.nc --scale 4] [--members N]
        --out DIR

(``python -m cloudsr_hpc.submit evaluate`` is the user-facing form; it also picks checkpoints up
from ``--checkpoints``.)  Without ``--hr`` the held-out pairs of ``pairs`` are used.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from .cli import guarded, setup_logging
from .config import load
from .schema import EvaluateConfig

log = logging.getLogger("cloudsr_hpc.evaluate")


def perceptual_metric(cfg: EvaluateConfig):
    """(metric or None, table label, note): LPIPS only from a staged, checksummed backbone."""
    if not cfg.lpips:
        return None, None, "disabled (evaluate.lpips: false)"
    from .evaluation.perceptual import LPIPSUnavailable, PerceptualMetric
    try:
        metric = PerceptualMetric(cfg.weights_dir or None)
    except LPIPSUnavailable as e:
        log.warning("%s", e)
        return None, None, str(e)
    return metric, metric.label, (None if metric.official else
                                  "computed with an UNOFFICIAL backbone (staged with --allow-unofficial)")


def run(cfg: EvaluateConfig, out_dir: str | Path, hr: str | None = None, scale: int | None = None) -> dict:
    from .data.sensors import load_registry
    from .evaluation.protocol import evaluate_pairs, evaluate_scene, load_methods
    from .evaluation.report import write_report
    registry = load_registry()
    methods, ref = load_methods(cfg)
    pair = ref.get("pair") or ref.get("config", {}).get("data", {}).get("pair") or cfg.pair
    if pair != cfg.pair:  # the checkpoints say what they super-resolve
        log.info("evaluate: pair %s from the checkpoints (config says %s)", pair, cfg.pair)
        cfg.pair = pair
    perceptual, label, note = perceptual_metric(cfg)
    if hr:
        ev = evaluate_scene(cfg, methods, ref, registry, hr, scale, perceptual)
        title = f"Self-supervised evaluation on {Path(hr).name} ({cfg.pair})"
    else:
        ev = evaluate_pairs(cfg, methods, registry, perceptual)
        title = f"Held-out {cfg.pair} pairs"
    ev.lpips_label, ev.lpips_note = label, note
    paths = write_report(ev, out_dir, title, cfg.fss.table_window, cfg.pair)
    print(Path(paths["markdown"]).read_text())
    res = {"outputs": paths, "overall": {m: s["overall"] for m, s in ev.scores.items()}}
    if ev.ensemble:
        res["ensemble"] = {m: e["overall"] for m, e in ev.ensemble.items()}
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cloudsr_hpc.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="evaluate.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--hr", help="an HR scene in canonical NetCDF: self-supervised protocol")
    p.add_argument("--scale", type=int, help="expected scale of the checkpoints (checked)")
    p.add_argument("--members", type=int, metavar="N",
                   help="ensemble members per stochastic method (evaluate.members)")
    p.add_argument("--out", help="output directory (default: out_dir of the config)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    def go() -> int:
        cfg = load(EvaluateConfig, args.config,
                   args.set + [f"members={args.members}"] * (args.members is not None))
        res = run(cfg, args.out or cfg.out_dir, args.hr, args.scale)
        print(json.dumps(res["outputs"]))
        return 0

    return guarded(go)


if __name__ == "__main__":
    raise SystemExit(main())

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

from .cli import guarded, setup_process
from .config import load
from .errors import ConfigError
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


def _methods(cfg: EvaluateConfig) -> tuple[dict, dict]:
    """The learned methods and the reference stage meta; ``cfg.pair`` set from the checkpoints,
    which say what they super-resolve."""
    from .evaluation.protocol import load_methods
    methods, ref = load_methods(cfg)
    pair = ref.get("pair") or ref.get("config", {}).get("data", {}).get("pair") or cfg.pair
    if pair != cfg.pair:
        log.info("evaluate: pair %s from the checkpoints (config says %s)", pair, cfg.pair)
        cfg.pair = pair
    return methods, ref


def _evaluation(cfg: EvaluateConfig, methods: dict, ref: dict, hr: str | None, scale: int | None,
                perceptual=None):
    from .data.sensors import load_registry
    from .evaluation.protocol import evaluate_pairs, evaluate_scene
    registry = load_registry()
    if hr:
        return evaluate_scene(cfg, methods, ref, registry, hr, scale, perceptual)
    return evaluate_pairs(cfg, methods, registry, perceptual)


def run(cfg: EvaluateConfig, out_dir: str | Path, hr: str | None = None, scale: int | None = None) -> dict:
    from .evaluation.report import write_report
    methods, ref = _methods(cfg)
    perceptual, label, note = perceptual_metric(cfg)
    ev = _evaluation(cfg, methods, ref, hr, scale, perceptual)
    title = (f"Self-supervised evaluation on {Path(hr).name} ({cfg.pair})" if hr
             else f"Held-out {cfg.pair} pairs")
    ev.lpips_label, ev.lpips_note = label, note
    if cfg.calibration:
        ev.info["spread_calibration"] = str(Path(cfg.calibration).resolve())
    paths = write_report(ev, out_dir, title, cfg.fss.table_window, cfg.pair)
    print(Path(paths["markdown"]).read_text())
    res = {"outputs": paths, "overall": {m: s["overall"] for m, s in ev.scores.items()}}
    if ev.ensemble:
        res["ensemble"] = {m: e["overall"] for m, e in ev.ensemble.items()}
    return res


def calibrate(cfg: EvaluateConfig, out: str | Path, hr: str | None = None, scale: int | None = None) -> dict:
    """Fit the spread inflation of every stochastic method of ``cfg.methods`` on ``cfg.pairs`` (or an
    ``hr`` scene): draw its ``cfg.members``-member ensemble there, take each channel's spread/skill,
    α = 1 / spread/skill, and write the calibration JSON (:mod:`cloudsr_hpc.models.calibration`).
    Fit it on pairs the evaluation never sees (the training split, or a split of its own)."""
    from .models import calibration
    if cfg.members < 2:
        raise ConfigError(f"evaluate.members: {cfg.members}; a spread calibration needs an ensemble (>= 2)")
    if cfg.calibration:
        raise ConfigError("evaluate.calibration: must be empty while fitting one")
    cfg.lpips = False  # only the ensemble's second moment is needed
    cfg.methods = [m for m in cfg.methods if m != "bicubic"]
    methods, ref = _methods(cfg)
    methods = {m: c for m, c in methods.items() if c.stochastic}
    if not methods:
        raise ConfigError(f"evaluate.methods: {cfg.methods} has no stochastic method to calibrate")
    cfg.methods = list(methods)
    ev = _evaluation(cfg, methods, ref, hr, scale)
    source = str(Path(hr).resolve()) if hr else str(Path(cfg.pairs).resolve())
    cals = []
    for name, meth in methods.items():
        e = ev.ensemble[name]
        fitted = {"source": source, "members": cfg.members, "seed": cfg.seed,
                  "pixels": e["overall"]["pixels"], "spread_skill_overall": e["overall"]["spread_skill"]}
        cals.append(calibration.fit(name, meth, {c: v["spread_skill"] for c, v in e["channels"].items()},
                                    fitted))
        log.info("calibrate %s: spread/skill %s -> inflation %s", name,
                 " ".join(f"{c}={v['spread_skill']:.3f}" for c, v in e["channels"].items()),
                 " ".join(f"{a:.3f}" for a in cals[-1].inflation))
    path = calibration.save(out, cals)
    return {"calibration": str(path), "methods": {c.method: dict(zip(c.channels, c.inflation, strict=True))
                                                  for c in cals}}


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
    setup_process(args.verbose)

    def go() -> int:
        cfg = load(EvaluateConfig, args.config,
                   args.set + [f"members={args.members}"] * (args.members is not None))
        res = run(cfg, args.out or cfg.out_dir, args.hr, args.scale)
        print(json.dumps(res["outputs"]))
        return 0

    return guarded(go)


if __name__ == "__main__":
    raise SystemExit(main())

"""``submit demo``: the whole chain on the embedded default (or on real files), no cluster.

Synthetic default: archive -> training shards -> tiny Stage 1, Stage 2 and regression models -> a
local reprocessing campaign -> the held-out table.  A single-sensor pair with real files (``--pair
abi_abi --archive ../shared/data/abi-real``): HR shards split by space -> the regression and Stage 2
-> one real scene read and super-resolved -> the held-out table.  Steps whose results exist are kept.

The steps a user would type (``synth``, ``pairs``, ``read``, ``campaign``) run through ``step``,
the ``submit`` CLI handed in by :mod:`cloudsr_hpc.submit` (this module sits above the entry points
and below the CLI, so it never imports it); training and inference run as their own processes, as
on a cluster.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from .config import config_path, load
from .errors import CloudSRError

log = logging.getLogger("cloudsr_hpc.demo")

Step = Callable[[list[str]], int]  # the submit CLI: argv -> exit status


# the documented short CPU training (demo, README figures, tests): tiny UNets, DEMO_STEPS steps per
# model, Stage 2 twice as many (it learns from fresh degradations every step)
DEMO_MODEL = ["model.base_channels=16", "model.channel_mult=[1,2]", "diffusion.steps=2", "train.batch_size=8",
              "train.lr=5e-4", "train.val_every=1000"]
DEMO_STEPS = 150
REAL_DEMO_BBOX = [-160.0, 30.0, -147.0, 42.0]
DEMO_MEMBERS = 8  # the demo evaluation's ensemble size (scores of the ensemble beside member 0)
DEMO_CALIBRATION_PAIRS = 256  # train pairs the demo fits the ensemble's spread inflation on
REAL_DEMO_STEPS = 1200  # the real-data demo (configs/stage2_abi.yaml, regression_abi.yaml): see README


def _train_models(runs: Path, shards: Path, models: list[tuple[str, str, list[str]]],
                       pair: str) -> dict[str, Path]:
    """Train each (name, config, extra overrides) of the demo recipe in order, unless its export
    exists (a later model may start from an earlier one)."""
    for name, config, extra in models:
        if (runs / name / "export" / "model.pt").exists():
            continue
        log.info("demo: training %s", name)
        cmd = [sys.executable, "-m", "cloudsr_hpc.train", "--config", str(config_path(config)),
               "--set", f"data.shards={shards}", "--set", f"train.out_dir={runs / name}", "--set",
               f"data.pair={pair}"]
        if subprocess.run(cmd + [a for kv in extra for a in ("--set", kv)]).returncode:
            raise CloudSRError(f"demo: training {name} failed (see the log above)")
    return {name: runs / name / "export" / "model.pt" for name, _, _ in models}


def evaluate_held_out(root: Path, pair: str, shards: Path, seed: int, ck: dict[str, Path],
                     extra: list[str] = (), members: int = 1) -> Path:
    """Score the held-out ``val`` split; with an ensemble, its spread calibrated first on (at most
    DEMO_CALIBRATION_PAIRS of) the ``train`` split, which the evaluation never sees."""
    from .evaluate import calibrate
    from .evaluate import run as evaluate
    from .schema import EvaluateConfig
    sets = [f"pair={pair}", f"seed={seed}", f"members={members}", *extra,
            *(f"{k}_checkpoint={v}" for k, v in ck.items())]
    if members > 1:
        cal = root / "evaluation" / "calibration.json"
        if not cal.exists():
            calibrate(load(EvaluateConfig, "evaluate.yaml", sets + [f"pairs={shards / 'train'}",
                                                                    f"max_pairs={DEMO_CALIBRATION_PAIRS}"]),
                      cal)
        sets.append(f"calibration={cal}")
    cfg = load(EvaluateConfig, "evaluate.yaml", sets + [f"pairs={shards / 'val'}"])
    return Path(evaluate(cfg, root / "evaluation")["outputs"]["markdown"])


def run(args, step: Step) -> int:
    """The embedded default end to end, no cluster: synthetic archive -> training shards -> tiny
    Stage 1, Stage 2 and regression models -> a local reprocessing campaign of the last slots
    (stitched NetCDF + quicklooks) -> held-out metrics table.  Steps whose results exist are kept.
    With a single-sensor pair and ``--archive`` (real files), :func:`run_real` instead."""
    from .data.sensors import load_registry
    from .evaluation.plots import pairs_quicklook
    if load_registry(args.sensors).pair(args.pair).self_supervised:
        return run_real(args, step)
    root = Path(args.out).resolve()
    archive, shards, runs = root / "archive", root / "pairs" / args.pair, root / "runs"
    common = ["--sensors", args.sensors, "--set", f"synth.seed={args.seed}"]
    synth_config = ["--config", args.synth_config] if getattr(args, "synth_config", None) else []
    if not archive.exists() and step(["synth", "--pair", args.pair, "--start", "2024-06-01T11:00", "--end",
                                      "2024-06-01T12:45", "--archive", str(archive), *common, *synth_config]):
        return 2
    if not any((shards / "val").glob("*.h5")) and step(["pairs", "--pair", args.pair, "--archive",
                                                        str(archive),
                                               "--out", str(shards), *common]):
        return 2
    pairs_quicklook(sorted((shards / "train").glob("pairs-*.h5"))[0], root / "quicklook_pairs.png")
    steps = lambda n: [f"train.steps={n}", f"train.ckpt_every={n}"]  # noqa: E731
    ck = _train_models(runs, shards, [
        ("stage1", "stage1.yaml", DEMO_MODEL + steps(args.steps) + ["init_from=null"]),
        ("stage2", "stage2.yaml",
         DEMO_MODEL + steps(2 * args.steps) + [f"init_from={runs / 'stage1' / 'export' / 'model.pt'}"]),
        ("regression", "regression.yaml", DEMO_MODEL + steps(args.steps))], args.pair)
    rc = step(["campaign", "--name", "demo", "--root", str(root / "campaigns"), "--pair", args.pair,
               "--start", "2024-06-01T12:30", "--end", "2024-06-01T12:45", "--archive", str(archive),
               "--executor", "local", "--workers", "2", "--sensors", args.sensors, "--set", "cpu_threads=1",
               "--set", "batch_size=4",
               "--set", f"stage1_checkpoint={ck['stage1']}", "--set", f"stage2_checkpoint={ck['stage2']}",
               "--set", f"regression_checkpoint={ck['regression']}", "--set", "tile_lr=128",
               "--set", "overlap_lr=16", "--set", "chunk=256"])
    if rc:
        return rc
    table = evaluate_held_out(root, args.pair, shards, args.seed, ck, members=args.members)
    print(json.dumps({"archive": str(archive), "shards": str(shards),
                      "models": {k: str(v) for k, v in ck.items()},
                      "outputs": str(root / "campaigns" / "demo" / "output"), "evaluation": str(table.parent),
                      "quicklook_pairs": str(root / "quicklook_pairs.png")}))
    return 0


def run_real(args, step: Step) -> int:
    """A single-sensor pair on real files (``--pair abi_abi --archive ../shared/data/abi-real``):
    HR shards cut from the archive's scenes and split by space -> the latest scene read to canonical
    NetCDF (``--bbox``) -> Stage 2 and the regression baseline trained on the shards (self-supervised:
    LR = degraded HR) -> the scene super-resolved x scale -> the held-out (val) blocks scored."""
    if not args.archive:
        raise CloudSRError(f"demo --pair {args.pair}: a single-sensor pair needs --archive (real files)")
    from .data.index import ArchiveIndex
    from .data.sensors import load_registry
    reg = load_registry(args.sensors)
    pair = reg.pair(args.pair)
    root = Path(args.out).resolve()
    archive = Path(args.archive).resolve()
    shards, runs = root / "pairs" / args.pair, root / "runs"
    if not any((shards / "val").glob("*.h5")) and step(["pairs", "--pair", args.pair, "--archive",
                                                        str(archive),
                                               "--out", str(shards), "--config", "pairs_abi.yaml",
                                                        "--sensors", args.sensors]):
        return 2
    # the scene first: a box off it (another satellite's archive) fails in seconds, not after training
    scene_files = ArchiveIndex(archive, reg).between(pair.hr, pair.hr_formats, dt.datetime.min,
                                                     dt.datetime.max)[-1]
    scene = root / "scenes" / f"{pair.hr}_{scene_files.time:%Y%m%dT%H%M}.nc"
    bbox = [str(v) for v in args.bbox] if args.bbox else []
    if not scene.exists() and step(["read", *map(str, scene_files.files), "--sensor", pair.hr, "--out",
                                    str(scene), "--channels", *pair.hr_channels, "--sensors", args.sensors]
                                   + (["--bbox", *bbox] if bbox else [])):
        return 2
    n = args.steps if args.steps != DEMO_STEPS else REAL_DEMO_STEPS
    steps = lambda k: [f"train.steps={k}", f"train.ckpt_every={k}"]  # noqa: E731
    # Stage 2 starts from the regression (a good mean) and learns the texture on top: measured
    # better gradients at the same PSNR than twice the steps from scratch (README)
    ck = _train_models(runs, shards, [
        ("regression", "regression_abi.yaml", steps(n)),
        ("stage2", "stage2_abi.yaml",
         steps(max(1, n // 2)) + [f"init_from={runs / 'regression' / 'export' / 'model.pt'}"])],
        args.pair)
    infer_dir = root / "infer"
    if not list(infer_dir.glob("cloudsr_*.nc")):
        cmd = [sys.executable, "-m", "cloudsr_hpc.infer", "--input", str(scene), "--out", str(infer_dir),
               "--config", str(config_path("infer.yaml")), "--set", f"pair={args.pair}", "--set", "stages=2",
               "--set", f"stage2_checkpoint={ck['stage2']}", "--set", "tile_lr=96", "--set", "overlap_lr=8",
               "--set", "chunk=512"]
        if subprocess.run(cmd).returncode:
            raise CloudSRError("demo: inference of the real scene failed (see the log above)")
    table = evaluate_held_out(root, args.pair, shards, args.seed, ck,
                             ["methods=[bicubic,regression,stage2]", "spectrum_tile=64"], args.members)
    print(json.dumps({"archive": str(archive), "shards": str(shards),
                      "models": {k: str(v) for k, v in ck.items()},
                      "scene": str(scene), "outputs": str(infer_dir), "evaluation": str(table.parent)}))
    return 0

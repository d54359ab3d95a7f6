"""Ensemble inference: the cost of N members against one, and peak memory.

One window scene (smoothed-noise clouds, ``infer_fulldisk.cloud_scene``) through
``python -m cloudsr_hpc.infer --members N`` on one rank, for N in ``--members`` (1 first), each run in
its own process so its peak RSS (VmHWM, printed by infer) is its own.  Per N: wall time, the
pipeline's compute seconds, cost relative to N = 1 (ideal: N x the model time, with the read,
tiling and writing shared), output size, and peak RSS.  Models are random-weight exports of the
demo's shape (``tests.conftest.make_export``), so the figures are the pipeline's, not a model's.

    python benchmarks/ensemble.py [--lr-size 192 --members 1 2 4 8 --keep-members]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from common import save  # noqa: E402
from infer_fulldisk import cli, cloud_scene  # noqa: E402

from tests.conftest import make_export  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lr-size", type=int, default=192, help="LR scene side (pixels)")
    ap.add_argument("--members", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--keep-members", action="store_true", help="also write every member")
    ap.add_argument("--tile", type=int, default=64)
    ap.add_argument("--overlap", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/ensemble.json"))
    args = ap.parse_args(argv)
    from cloudsr_hpc.data.geometry import SEVIRI_FULL_DISK
    tmp = Path(tempfile.mkdtemp(prefix="bench-ens-"))
    s2 = make_export(tmp / "s2", stage=2, base=16, mult=(1, 2, 2), steps=4, seed=1)
    scene = cloud_scene(SEVIRI_FULL_DISK.window(1500, 1500, args.lr_size, args.lr_size), tmp / "scene.nc")
    sets = [f"stage2_checkpoint={s2}", "stages=2", f"tile_lr={args.tile}", f"overlap_lr={args.overlap}",
            "quicklook=false", f"cpu_threads={args.threads}"]
    runs = {}
    for n in sorted(set(args.members)):
        extra = [f"members={n}"] + (["keep_members=true"] if args.keep_members else [])
        summary, wall = cli(1, scene, tmp / f"n{n}", sets + extra)
        runs[n] = {"wall_s": wall, "compute_s": summary["compute_s_per_rank"][0],
                   "peak_rss_mb": summary["peak_rss_mb"][0], "output_mb": round(summary["size"] / 2 ** 20, 2),
                   "tiles": summary["tiles"]}
        print(f"members {n}: {runs[n]}", flush=True)
    base = runs[min(runs)]
    for r in runs.values():
        r["wall_vs_1"] = round(r["wall_s"] / base["wall_s"], 2)
        r["compute_vs_1"] = round(r["compute_s"] / base["compute_s"], 2)
        r["rss_vs_1"] = round(r["peak_rss_mb"] / base["peak_rss_mb"], 2)
    save({"scene_lr": args.lr_size, "tile_lr": args.tile, "overlap_lr": args.overlap,
          "model": "stage 2, T=4, base 16",
          "keep_members": args.keep_members, "threads": args.threads, "runs": runs}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

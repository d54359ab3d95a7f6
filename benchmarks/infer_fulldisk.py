"""Full-disk inference: pipeline overhead, MPI speedup, memory per rank and GPU throughput.

(a) one window scene, in process, one rank: wall time of ``ScenePipeline.run`` (read, tiles,
    blend, compressed write, merge; quicklook off) against the bare batched forward
    (``TileRunner.run`` over exactly the same tiles, outputs dropped); overhead = pipeline/forward - 1.
(b) the same scene through ``mpiexec -n 1`` and ``-n 2 python -m cloudsr_hpc.infer``: wall times,
    speedup, and the largest per-channel difference between the two outputs (expected 0).
(c) ``--full-disk``: a true 3712x3712 SEVIRI disk (space NaN) with a tiny regression model on
    1 and 2 ranks: wall times and speedup, per-rank seconds per stage, peak RSS per rank against
    the LR input and the raw HR float32 size, output MPx/s.
Also (b0): user/system CPU seconds of one rank with glibc's allocator defaults and with the heap
reuse every entry point applies (``cloudsr_hpc.cli.reuse_heap``).
(d) with CUDA: seconds per full disk and output MPx/s on the GPU (bf16 via precision=auto).

Models are random-weight exports (``tests.conftest.make_export``); scenes are smoothed-noise
cloud fields in physical units.  Torch threads per rank are fixed (``--threads``, default half
the cores) so 1- and 2-rank runs compare like for like and give bitwise-equal outputs.

    python benchmarks/infer_fulldisk.py [--lr-size 256 --tile 128 --overlap 16 --batch 3]
    python benchmarks/infer_fulldisk.py --full-disk          # adds (c); takes minutes on a CPU
    python benchmarks/infer_fulldisk.py --lr-size 96 --tile 32 --overlap 8   # smoke test
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from common import save, timed  # noqa: E402

from cloudsr_hpc.core.resources import peak_rss_mb  # noqa: E402
from tests.conftest import make_export  # noqa: E402

MPIEXEC = str(Path(sys.executable).parent / "mpiexec")


def cloud_scene(grid, path: Path, seed: int = 0) -> Path:
    """A canonical SEVIRI scene on ``grid``: thresholded smooth noise -> cloud, NaN off the disk."""
    from cloudsr_hpc.data.scene import make_scene, write_scene
    from cloudsr_hpc.data.sensors import load_registry
    lon, lat = grid.lonlat()
    rng = np.random.default_rng(seed)
    g = gaussian_filter(rng.standard_normal(grid.shape, dtype=np.float32), 4.0)
    top = gaussian_filter(rng.standard_normal(grid.shape, dtype=np.float32), 12.0)
    g, top = g / g.std(), top / top.std()
    tau = 40.0 * np.sqrt(np.maximum(g - 0.25, 0.0))
    cf = tau / (tau + 6.0)  # cloud albedo / emissivity
    t_surf = 300.0 - 40.0 * np.sin(np.radians(np.nan_to_num(lat))) ** 2
    ctt = 215.0 + 45.0 / (1.0 + np.exp(1.5 * top))
    bt = t_surf * (1 - cf) + ctt * cf
    vals = {"VIS006": 6 + 80 * cf, "VIS008": 10 + 76 * cf, "IR_016": 5 + 50 * cf,
            "IR_039": bt + 6 + 8 * cf, "IR_108": bt}
    off = ~np.isfinite(lon)
    vals = {k: np.where(off, np.nan, v).astype(np.float32) for k, v in vals.items()}
    ds = make_scene(vals, load_registry().sensor("seviri"), dt.datetime(2024, 6, 1, 12), grid=grid)
    return write_scene(ds, path)


def cli(n: int, scene: Path, out: Path, sets: list[str], env: dict | None = None) -> tuple[dict, float]:
    """``mpiexec -n n python -m cloudsr_hpc.infer``: (its JSON summary with the ranks' summed CPU
    seconds added as ``cpu_s`` {user, system}, wall seconds)."""
    cmd = [MPIEXEC, "-n", str(n), sys.executable, "-m", "cloudsr_hpc.infer", "--input", str(scene),
           "--out", str(out), "--overwrite", "--quiet"] + [a for s in sets for a in ("--set", s)]
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the ranks are waited-for descendants
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)}: exit {p.returncode}\n{p.stderr[-3000:]}")
    summary = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1])
    summary["cpu_s"] = {"user": round(r1.ru_utime - r0.ru_utime, 2),
                        "system": round(r1.ru_stime - r0.ru_stime, 2)}
    return summary, round(wall, 2)


def max_diff(a: str, b: str) -> dict:
    import xarray as xr
    with xr.open_dataset(a) as x, xr.open_dataset(b) as y:
        out = {}
        for c in [v for v in x.data_vars if x[v].dims == ("y", "x")]:
            u, v = x[c].values, y[c].values
            same_nan = bool((np.isnan(u) == np.isnan(v)).all())
            out[c] = float(np.nanmax(np.abs(u - v))) if same_nan else "NaN masks differ"
        return out


def in_process(cfg_sets: list[str], scene: Path, out: Path) -> dict:
    """(a): ScenePipeline.run vs TileRunner.run over the same tiles, one rank in this process."""
    import torch

    from cloudsr_hpc.config import load
    from cloudsr_hpc.data.sensors import load_registry
    from cloudsr_hpc.inference.mpi import Ranks
    from cloudsr_hpc.inference.pipeline import ScenePipeline, read_input
    from cloudsr_hpc.schema import InferConfig
    cfg = load(InferConfig, "infer.yaml", cfg_sets + ["quicklook=false"])
    reg = load_registry()
    pipe = ScenePipeline(cfg, reg, Ranks(), out, progress=False)
    sc = read_input([scene], reg, pipe.pair.lr, pipe.pair.lr_channels)
    lr, valid, tiles, origin = pipe.prepare(sc)  # exactly the pipeline's tile plan

    def forward():
        sync = torch.cuda.synchronize if pipe.device.type == "cuda" else (lambda: None)
        t0 = time.perf_counter()
        for _ in pipe.runner.run(lr, tiles, origin):
            pass
        sync()
        return time.perf_counter() - t0

    for _ in pipe.runner.run(lr, tiles[:pipe.runner.batch_size], origin):  # warm-up (allocator, kernels)
        pass
    f1 = forward()
    t0 = time.perf_counter()
    res = pipe.run([scene])
    wall = time.perf_counter() - t0
    f2 = forward()  # forward before and after the pipeline: load drift shows as f1 != f2
    fwd = min(f1, f2)
    hr_px = sc.values.shape[1] * sc.values.shape[2] * pipe.scale ** 2
    return {"device": str(pipe.device), "tiles": len(tiles), "lr_shape": list(sc.values.shape),
            "pipeline_s": round(wall, 3), "forward_s": round(fwd, 3),
            "forward_runs_s": [round(f1, 3), round(f2, 3)],
            "overhead": round(wall / fwd - 1, 4),
            "pipeline_seconds": {k: round(v, 3) for k, v in res.seconds.items()},
            "stages_s": res.stages_s[0],
            "output_mpx_per_s": round(hr_px / 1e6 / wall, 2), "output_bytes": res.path.stat().st_size,
            "peak_rss_mb": res.peak_rss_mb}


def seams(cfg_sets: list[str], scene: Path, out: Path, n_lr: int, tile: int, overlap: int) -> dict:
    """(e): seam ratio of the last channel, blended (configured overlap) vs naive (no overlap)."""
    import xarray as xr

    from cloudsr_hpc.config import load
    from cloudsr_hpc.data.sensors import load_registry
    from cloudsr_hpc.evaluation.metrics import seam_ratio, tile_edge_cols
    from cloudsr_hpc.inference.mpi import Ranks
    from cloudsr_hpc.inference.pipeline import ScenePipeline
    from cloudsr_hpc.schema import InferConfig
    res = {}
    for name, ov in (("blended", overlap), ("naive", 0)):
        cfg = load(InferConfig, "infer.yaml", cfg_sets + [f"overlap_lr={ov}"])
        path = ScenePipeline(cfg, load_registry(), Ranks(), out / name, progress=False).run([scene]).path
        with xr.open_dataset(path) as ds:
            img = ds[[v for v in ds.data_vars if ds[v].ndim == 2][-1]].values
        res[name] = round(seam_ratio(img, tile_edge_cols(n_lr, tile, ov, 4)), 3)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lr-size", type=int, default=352,
                    help="side of the LR window scene for (a)/(b): 3x3 tiles of 128")
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--overlap", type=int, default=16)
    ap.add_argument("--batch", type=int, default=3, help="tiles per forward (3 divides the 9 default tiles)")
    ap.add_argument("--base", type=int, default=8)
    ap.add_argument("--mult", default="1,2")
    ap.add_argument("--chunk", type=int, default=256, help="HR output chunk (rank bands start on chunk rows)")
    ap.add_argument("--steps", type=int, default=2, help="sampling steps per diffusion stage")
    ap.add_argument("--stages", default="cascade", choices=["1", "2", "cascade", "regression"])
    ap.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                    help="torch threads per rank")
    ap.add_argument("--full-disk", action="store_true",
                    help="(c): 3712x3712 disk, tiny regression model, 2 ranks")
    ap.add_argument("--out", default="benchmarks/results/infer_fulldisk.json")
    args = ap.parse_args()
    import torch

    import cloudsr_hpc.inference.pipeline  # noqa: F401 - imported first, for import_rss_mb
    from cloudsr_hpc.data.geometry import SEVIRI_FULL_DISK as FD
    mult = tuple(int(m) for m in args.mult.split(","))
    res: dict = {"settings": {"lr_size": args.lr_size, "tile_lr": args.tile, "overlap_lr": args.overlap,
                              "batch_size": args.batch, "chunk": args.chunk, "base": args.base,
                              "mult": list(mult),
                              "steps": args.steps, "stages": args.stages, "cpu_threads": args.threads,
                              "pair": "seviri_viirs"},
                 "import_rss_mb": round(peak_rss_mb(), 1)}  # every rank's floor: torch + the package
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ck = {f"{k}_checkpoint": str(make_export(tmp / k, stage=s, base=args.base, mult=mult,
                                                 steps=args.steps))
              for k, s in (("stage1", 1), ("stage2", 2), ("regression", "regression"))}
        sets = [f"tile_lr={args.tile}", f"overlap_lr={args.overlap}", f"batch_size={args.batch}",
                f"chunk={args.chunk}",
                f"stages={args.stages}", f"cpu_threads={args.threads}", "quicklook=false",
                *(f"{k}={v}" for k, v in ck.items())]
        n = args.lr_size  # a window on the western limb at the equator: a little space, mostly disk
        with timed(res, "scene_write_s"):
            scene = cloud_scene(FD.window(FD.full_rows // 2 - n // 2, 0, n, n), tmp / "LR.nc")

        res["a_pipeline_vs_forward"] = a = in_process(sets, scene, tmp / "a")
        print(f"(a) {a['tiles']} tiles: pipeline {a['pipeline_s']} s vs forward {a['forward_s']} s "
              f"-> overhead {100 * a['overhead']:.1f} % (target <= 10 %); {a['pipeline_seconds']}",
              flush=True)

        (s0, w0) = cli(1, scene, tmp / "n0", sets, env={"CLOUDSR_MALLOC": "system"})
        (s1, w1), (s2, w2) = cli(1, scene, tmp / "n1", sets), cli(2, scene, tmp / "n2", sets)
        res["allocator"] = {
            "note": "1 rank, same scene: glibc defaults (CLOUDSR_MALLOC=system) vs heap reuse (the default)",
            "system": {"wall_s": w0, **s0["cpu_s"], "peak_rss_mb": s0["peak_rss_mb"]},
            "reuse": {"wall_s": w1, **s1["cpu_s"], "peak_rss_mb": s1["peak_rss_mb"]},
            "system_share_of_wall": {"system": round(s0["cpu_s"]["system"] / w0, 3),
                                     "reuse": round(s1["cpu_s"]["system"] / w1, 3)}}
        print(f"(b0) allocator: system time {s0['cpu_s']['system']} s of {w0} s wall with glibc defaults, "
              f"{s1['cpu_s']['system']} s of {w1} s with heap reuse", flush=True)
        res["b_mpi"] = b = {"wall_s_1": w1, "wall_s_2": w2, "speedup": round(w1 / w2, 3),
                            "pipeline_s_1": s1["seconds"]["total"], "pipeline_s_2": s2["seconds"]["total"],
                            "pipeline_speedup": round(s1["seconds"]["total"] / s2["seconds"]["total"], 3),
                            "seconds_1": s1["seconds"], "seconds_2": s2["seconds"],  # rank 0's view
                            "compute_s_per_rank_2": s2["compute_s_per_rank"],
                            "tiles_per_rank_2": s2["tiles_per_rank"],
                            "peak_rss_mb_1": s1["peak_rss_mb"], "peak_rss_mb_2": s2["peak_rss_mb"],
                            "max_abs_diff": max_diff(s1["output"], s2["output"])}
        print(f"(b) mpiexec wall 1 rank {w1} s, 2 ranks {w2} s -> x{b['speedup']} (pipeline only "
              f"x{b['pipeline_speedup']}); max |n1 - n2| {b['max_abs_diff']}", flush=True)

        res["e_seams"] = e = seams(sets, scene, tmp / "e", n, args.tile, args.overlap)
        print("(e) seam ratio (|d/dx| across tile edges / elsewhere; 1 = invisible): blended "
              f"{e['blended']}, naive non-overlapping {e['naive']}", flush=True)

        hr_px = FD.full_rows * FD.full_cols * 16  # x4 in each direction
        if args.full_disk or torch.cuda.is_available():
            with timed(res, "full_disk_scene_write_s"):
                fd_scene = cloud_scene(FD, tmp / "FD.nc", seed=1)
            context = {"lr_file_bytes": fd_scene.stat().st_size, "hr_float32_bytes": 5 * hr_px * 4,
                       "lr_float32_bytes": 5 * FD.full_rows * FD.full_cols * 4}
        if args.full_disk:
            tiny = make_export(tmp / "tiny", stage="regression", base=4, mult=(1, 2), steps=1)
            fd_sets = [s for s in sets if not s.startswith(("stages=", "regression_checkpoint="))] + [
                "stages=regression", f"regression_checkpoint={tiny}"]
            s1, w1 = cli(1, fd_scene, tmp / "fd1", fd_sets)
            s, wall = cli(2, fd_scene, tmp / "fd", fd_sets)
            res["c_full_disk"] = c = {"model": "regression base=4 mult=1,2", "ranks": 2, "wall_s": wall,
                                      "wall_s_1": w1, "wall_s_2": wall, "speedup": round(w1 / wall, 3),
                                      "pipeline_speedup":
                                          round(s1["seconds"]["total"] / s["seconds"]["total"], 3),
                                      "seconds_1": s1["seconds"], "cpu_s_1": s1["cpu_s"],
                                      "seconds": s["seconds"], "cpu_s_2": s["cpu_s"], "tiles": s["tiles"],
                                      "peak_rss_mb_1": s1["peak_rss_mb"], "peak_rss_mb": s["peak_rss_mb"],
                                      "compute_s_per_rank": s["compute_s_per_rank"],
                                      "tiles_per_rank": s["tiles_per_rank"],
                                      "stages_s_1": s1["stages_s_per_rank"][0],
                                      "stages_s_per_rank_2": s["stages_s_per_rank"],
                                      "max_abs_diff_1_vs_2": max_diff(s1["output"], s["output"]),
                                      "output_bytes": Path(s["output"]).stat().st_size,
                                      # wall: with process start-up
                                      "output_mpx_per_s": round(hr_px / 1e6 / wall, 2),
                                      "output_mpx_per_s_pipeline":
                                          round(hr_px / 1e6 / s["seconds"]["total"], 2), **context}
            print(f"(c) full disk: 1 rank {w1} s, 2 ranks {wall} s -> x{c['speedup']}; peak RSS/rank "
                  f"{c['peak_rss_mb']} MB (LR float32 {context['lr_float32_bytes'] / 2**20:.0f} MiB, "
                  f"HR float32 "
                  f"{5 * hr_px * 4 / 2**20:.0f} MiB)", flush=True)
        if torch.cuda.is_available():
            g = in_process([s for s in sets if not s.startswith("cpu_threads=")], fd_scene, tmp / "gpu")
            res["gpu"] = {"device": torch.cuda.get_device_name(0), "precision": "auto (bf16)",
                          "seconds_per_full_disk": g["pipeline_s"], "forward_s": g["forward_s"],
                          "overhead": g["overhead"],
                          "output_mpx_per_s": g["output_mpx_per_s"],
                          "pipeline_seconds": g["pipeline_seconds"],
                          "peak_rss_mb": g["peak_rss_mb"], **context}
            print(f"(d) GPU full disk: {g['pipeline_s']} s, {g['output_mpx_per_s']} MPx/s", flush=True)
        else:
            res["gpu"] = None
            res["gpu_note"] = "torch.cuda.is_available() is False on this machine: no GPU figures"
    res["bench_peak_rss_mb"] = round(peak_rss_mb(), 1)
    res["torch"] = torch.__version__
    save(res, args.out)


if __name__ == "__main__":
    main()

"""Self-supervised evaluation of HR scenes: time and peak memory against scene size.

    python benchmarks/evaluate_scene.py [--out benchmarks/results/evaluate_scene.json]

Writes canonical HR scenes of 928 x 3712 and 3712 x 3712 pixels (same width, 4x the rows) and runs
``submit evaluate --hr`` on each in its own process (bicubic and a tiny two-stage cascade with
random weights: the cost of the protocol, not of a model).  Reported: wall time, HR Mpx/s, peak
RSS of each, and the ratios between the two from this one run -- memory should stay flat (bands
stream; only the LR scene, 1/16 of the HR, grows) while time grows with the pixels.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import save  # noqa: E402

CODE = ("import sys; from cloudsr_hpc.submit import main; from cloudsr_hpc.core.resources import "
        "peak_rss_mb; rc = main(sys.argv[1:]); print('PEAK_MB', peak_rss_mb()); sys.exit(rc)")


def run(hr: Path, out: Path, models, threads: int) -> dict:
    args = ["evaluate", "--hr", str(hr), "--scale", "4", "--methods", "bicubic,cascade", "--checkpoints",
            str(models[0]), str(models[1]), "--out", str(out), "--set", "lpips=false", "--set",
            "batch_size=2", "--set", f"cpu_threads={threads}"]
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", CODE, *args], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(p.stderr[-3000:])
    doc = json.loads((out / "metrics.json").read_text())
    h, w = doc["info"]["shape_hr"]
    return {"shape_hr": [h, w], "wall_s": round(wall, 1), "hr_mpx_per_s": round(h * w / 1e6 / wall, 2),
            "peak_rss_mb": int(p.stdout.split("PEAK_MB")[1].split()[0]),
            "bicubic": doc["scores"]["bicubic"]["overall"], "cascade": doc["scores"]["cascade"]["overall"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "evaluate_scene.json"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from tests.conftest import make_export
    from tests.test_evaluate import write_hr_scene
    res: dict = {"what": "submit evaluate --hr (bicubic + 2-stage tiny cascade, random weights), one "
                         "process per scene"}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        models = (make_export(d / "s1", stage=1, base=8, seed=0),
                  make_export(d / "s2", stage=2, base=8, seed=1))
        for name, rows in (("short", 928), ("full", 3712)):
            hr = write_hr_scene(d / f"{name}.nc", rows, 3712)
            res[name] = run(hr, d / f"ev_{name}", models, args.threads)
            print(name, res[name]["wall_s"], "s", res[name]["peak_rss_mb"], "MB", flush=True)
    s, f = res["short"], res["full"]
    pixels = f["shape_hr"][0] * f["shape_hr"][1] / (s["shape_hr"][0] * s["shape_hr"][1])
    res["ratios"] = {"pixels": round(pixels, 2),
                     "wall": round(f["wall_s"] / s["wall_s"], 2),
                     "peak_rss": round(f["peak_rss_mb"] / s["peak_rss_mb"], 3),
                     "peak_rss_growth_mb": f["peak_rss_mb"] - s["peak_rss_mb"],
                     "one_float32_hr_copy_mb": round(5 * f["shape_hr"][0] * f["shape_hr"][1] * 4 / 2 ** 20)}
    save(res, args.out)


if __name__ == "__main__":
    main()

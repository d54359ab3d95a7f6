"""Data-layer figures: synthetic archive generation (small window and true 3712x3712 full disk)
and pair-building throughput (patches/s).

    python benchmarks/data_pipeline.py [--full] [--out benchmarks/results/data_pipeline.json]
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save, timed  # noqa: E402

from cloudsr_hpc.core.resources import peak_rss_mb  # noqa: E402
from cloudsr_hpc.data.index import slot_times  # noqa: E402
from cloudsr_hpc.data.pairs import PairBuilder  # noqa: E402
from cloudsr_hpc.data.sensors import load_registry  # noqa: E402
from cloudsr_hpc.data.synthetic.archive import SyntheticArchive  # noqa: E402
from cloudsr_hpc.schema import PairsConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--full", action="store_true", help="also time a true 3712x3712 SEVIRI full disk")
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--out", default="benchmarks/results/data_pipeline.json")
    args = ap.parse_args()
    reg = load_registry()
    res: dict = {"slots": args.slots}
    t0 = dt.datetime(2024, 6, 1, 11, 0)
    slots = slot_times(t0, t0 + dt.timedelta(minutes=15 * (args.slots - 1)), dt.timedelta(minutes=15))
    with tempfile.TemporaryDirectory() as tmp:
        arch = Path(tmp) / "archive"
        for pair in ("seviri_viirs", "msg_mtg"):
            sa = SyntheticArchive(reg, reg.pair(pair), arch / pair, size="small")
            with timed(res, f"synth_small_{pair}_s"):
                sa.write(slots)
            res[f"synth_small_{pair}_s_per_slot"] = round(res[f"synth_small_{pair}_s"] / args.slots, 3)
            stats = PairBuilder(reg, reg.pair(pair), arch / pair, Path(tmp) / "pairs" / pair,
                                PairsConfig()).run()
            res[f"pairs_{pair}"] = {"pairs": stats.pairs, "hr_patches": stats.hr_patches,
                                    "seconds": round(stats.seconds, 2),
                                    "patches_per_s": round(stats.patches_per_s, 1),
                                    "pairs_per_s": round(stats.pairs / stats.seconds, 1)}
        if args.full:
            sa = SyntheticArchive(reg, reg.pair("seviri_viirs"), Path(tmp) / "full", size="full")
            with timed(res, "synth_full_disk_init_s"):
                sa.scene.physical(sa.plan.domain, t0)
            with timed(res, "synth_full_disk_lr_write_s"):
                paths = sa.write_lr(t0)
            res["synth_full_disk_lr_file_mb"] = round(sum(p.stat().st_size for p in paths) / 1e6, 1)
            with timed(res, "synth_full_disk_hr_write_s"):
                sa.write_hr(t0)
    res["peak_rss_mb"] = round(peak_rss_mb(), 1)
    save(res, args.out)


if __name__ == "__main__":
    main()

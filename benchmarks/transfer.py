"""Synthetic-to-real transfer: models trained on the synthetic default only, scored on a real scene.

    python benchmarks/transfer.py --demo demo [--label after] [--out benchmarks/results/transfer.json]

The models of ``submit demo`` (SEVIRI -> VIIRS I-bands, synthetic archive only) never see a real
file.  The real GOES-17 ABI CONUS scene (``../shared/data/abi-real``, the real-data demo's window)
is read through the project's reader, its bands are given the VIIRS channel names the models expect
(``--map``, nearest spectral family; the shared files hold no window or visible band, so the
mapping is loose for the reflectances and exact only in kind for IR), and the self-supervised
protocol of ``submit evaluate --hr`` scores every method: degrade the HR scene x4 with the training
degradation, super-resolve, compare with the HR.  Only the IR bands are the transfer figure
(the issue's criterion): PSNR of each learned method minus bicubic's, and the gradient ratio.

Writes one entry per ``--label`` into the JSON (earlier labels are kept), so a before/after pair of
simulators can be compared: run once per demo directory.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_MAP = "I01=C04,I02=C04,I03=C06,I04=C10,I05=C16"
IR = ("I04", "I05")


def mapped_scene(real: Path, bbox: list[float], mapping: dict[str, str], out: Path) -> Path:
    """Read the real ABI bands through ``submit read`` and rename them to the model's channels."""
    import xarray as xr

    from cloudsr_hpc.submit import main as submit
    files = sorted(str(p) for p in real.glob("OR_ABI-L1b-RadC-*.nc"))
    abi = out.with_name("abi_window.nc")
    bands = sorted(set(mapping.values()))
    if submit(["read", *files, "--sensor", "abi", "--channels", *bands, "--bbox", *map(str, bbox), "--out",
               str(abi)]):
        raise SystemExit(f"reading {real} failed")
    with xr.open_dataset(abi) as ds:
        renamed = xr.Dataset({model: ds[band].rename(model) for model, band in mapping.items()},
                             attrs={**ds.attrs, "sensor": "viirs",
                                    "band_mapping": ",".join(f"{k}={v}" for k, v in mapping.items())})
        for name in ds.variables:  # the grid mapping and coordinates travel as they are
            if name not in bands and name not in renamed.variables:
                renamed[name] = ds[name]
        renamed.load().to_netcdf(out)
    return out


def score(demo: Path, scene: Path, out_dir: Path) -> dict:
    from cloudsr_hpc.config import load
    from cloudsr_hpc.evaluate import run
    from cloudsr_hpc.schema import EvaluateConfig
    runs = demo / "runs"
    ck = {name: runs / name / "export" / "model.pt" for name in ("stage1", "stage2", "regression")}
    missing = [str(p) for p in ck.values() if not p.exists()]
    if missing:
        raise SystemExit(f"{demo}: no trained demo models ({', '.join(missing)}); run `submit demo --out "
                         f"{demo}` first")
    cfg = load(EvaluateConfig, "evaluate.yaml", ["pair=seviri_viirs",
                                                 "methods=[bicubic,regression,stage2,cascade]",
                                                  "spectrum_tile=64",
                                                 *(f"{k}_checkpoint={v}" for k, v in ck.items())])
    res = run(cfg, out_dir, str(scene), 4)
    return json.loads(Path(res["outputs"]["json"]).read_text())


def ir_summary(metrics: dict) -> dict:
    """IR mean PSNR, its difference to bicubic and the gradient ratio, per method."""
    scores = metrics["scores"]
    mean = lambda m, k: sum(scores[m]["channels"][c][k] for c in IR) / len(IR)  # noqa: E731
    base = mean("bicubic", "psnr")
    return {m: {"psnr_ir": round(mean(m, "psnr"), 3), "psnr_minus_bicubic": round(mean(m, "psnr") - base, 3),
                "grad_ir": round(mean(m, "grad"), 3),
                "per_channel": {c: {k: round(scores[m]["channels"][c][k], 3) for k in ("psnr", "grad")}
                                for c in IR}}
            for m in scores}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", default="demo", help="a `submit demo` output directory (its runs/*/export)")
    ap.add_argument("--real", default=str(ROOT.parent / "shared" / "data" / "abi-real"))
    ap.add_argument("--bbox", nargs=4, type=float, default=[-160.0, 30.0, -147.0, 42.0])
    ap.add_argument("--map", default=DEFAULT_MAP,
                    help=f"model channel = ABI band, comma separated (default {DEFAULT_MAP})")
    ap.add_argument("--label", default="current", help="name of this entry in the JSON (e.g. before / after)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "transfer.json"))
    args = ap.parse_args()
    mapping = dict(item.split("=", 1) for item in args.map.split(","))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        scene = mapped_scene(Path(args.real), args.bbox, mapping, Path(tmp) / "abi_as_viirs.nc")
        metrics = score(Path(args.demo).resolve(), scene, Path(tmp) / "evaluation")
    summary = ir_summary(metrics)
    print(f"[{args.label}] real GOES-17 ABI window {args.bbox}, IR = "
          f"{', '.join(f'{c}<-{mapping[c]}' for c in IR)}")
    print(f"  {'method':<11} {'IR PSNR':>8} {'- bicubic':>10} {'grad ratio':>11}")
    for m, s in summary.items():
        print(f"  {m:<11} {s['psnr_ir']:8.2f} {s['psnr_minus_bicubic']:+10.2f} {s['grad_ir']:11.3f}")
    out = Path(args.out)
    doc = json.loads(out.read_text()) if out.exists() else {}
    doc[args.label] = {"demo": str(args.demo), "bbox": args.bbox, "mapping": mapping, "ir_bands": list(IR),
                       "shape_hr": metrics["info"].get("shape_hr"), "summary": summary,
                       "wall_s": round(time.perf_counter() - t0, 1)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

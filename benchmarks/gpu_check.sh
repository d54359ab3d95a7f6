#!/usr/bin/env bash
# One prepared check for a GPU machine (<= 8 min, no downloads, no internet):
#   1. nvidia-smi / torch environment
#   2. training throughput + MFU, default model (configs/stage1.yaml sizes), bf16
#   3. training throughput + MFU, large model (configs/stage2_large.yaml: ~92 M parameters, ZeRO-2,
#      activation checkpointing, fused AdamW), bf16, eager (train.compile=false)
#   4. full-disk cascade inference on the GPU (benchmarks/infer_fulldisk.py's part (d): a 3712x3712
#      SEVIRI disk -> 14848x14848 x 5 channels, random-weight cascade base 32, T = 2 per stage, bf16):
#      wall time, its breakdown, bare forward, peak device memory
#   5. as 3 with torch.compile (last: a cold compile is the slowest part)
# Every part runs under its own `timeout`, so one failure loses nothing else; each writes JSON into
# ${OUT:-benchmarks/results/gpu} and summary.json lists what ran, exit codes and seconds.
# Peak device memory: torch.cuda.max_memory_allocated, recorded by the python parts.
#
#   bash benchmarks/gpu_check.sh                                  # on the GPU machine
#   OUT=/tmp/gpu_smoke GPU_CHECK_SMOKE=1 bash benchmarks/gpu_check.sh   # CPU plumbing check (~2-3 min)
#
# PYTHON=... picks the interpreter (default: the repo's .venv/bin/python, else python).
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
SMOKE=${GPU_CHECK_SMOKE:-0}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/cloudsr_torch_ext}
export PYTHONUNBUFFERED=1
STATUS="$OUT/parts.tsv"
: > "$STATUS"

# part NAME TIMEOUT_S CMD...: run CMD under timeout, its output in $OUT/NAME.log, a line in parts.tsv
part() {
  local name=$1 limit=$2; shift 2
  local t0 rc cmd="$*"
  cmd=${cmd//$'\n'/ }; cmd=${cmd//$'\t'/ }  # one TSV field
  echo "== $name (timeout ${limit}s): ${cmd:0:200}"
  t0=$(date +%s.%N)
  timeout -k 10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {print b - a}')" \
    "$cmd" >> "$STATUS"
  echo "   exit $rc"
  tail -n 3 "$OUT/$name.log" | sed 's/^/   | /'
}

if [ "$SMOKE" = 1 ]; then  # CPU plumbing check: tiny shapes, small stand-ins for the big parts
  T_DEFAULT=(--batch 2 --patch-hr 32 --steps 1)
  T_LARGE=(--batch 1 --patch-hr 32 --steps 1 --base 16)
  T_DEFAULT_LIMIT=150; T_LIMIT=150; T_COMPILED=150; T_INFER=150
  INFER=(--window 96 --tile 32 --overlap 8 --batch 4 --base 8 --mult 1,2 --steps 1)
else
  T_DEFAULT=(--batch 32 --patch-hr 128 --steps 20 --precision bf16)
  T_LARGE=(--batch 16 --patch-hr 128 --steps 10 --precision bf16)
  T_DEFAULT_LIMIT=50; T_LIMIT=60; T_COMPILED=140; T_INFER=180  # with nvidia_smi 10 + env 30: <= 480 s in all
  INFER=(--tile 256 --overlap 16 --batch 0 --base 32 --mult 1,2,2 --steps 4)   # the default cascade (T = 4); batch from free memory
fi

part nvidia_smi 10 bash -c "set -o pipefail; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm \
  --format=csv | tee '$OUT/nvidia_smi.csv'"

part env 30 "$PYTHON" -c "
import json, sys, torch, deepspeed
cuda = torch.cuda.is_available()
r = {'python': sys.version.split()[0], 'torch': torch.__version__, 'cuda': torch.version.cuda,
     'deepspeed': deepspeed.__version__, 'cuda_available': cuda,
     'device_name': torch.cuda.get_device_name(0) if cuda else None,
     'device_count': torch.cuda.device_count(), 'smoke': '$SMOKE' == '1'}
open('$OUT/env.json', 'w').write(json.dumps(r, indent=2)); print(json.dumps(r))"

part train_default "$T_DEFAULT_LIMIT" "$PYTHON" benchmarks/train_throughput.py "${T_DEFAULT[@]}" \
  --out "$OUT/train_default.json"

part train_large "$T_LIMIT" "$PYTHON" benchmarks/train_throughput.py --config configs/stage2_large.yaml \
  "${T_LARGE[@]}" --set train.compile=false --out "$OUT/train_large.json"

# (d) of infer_fulldisk.py alone: its functions, not its main() (which first runs the CPU/MPI parts)
part infer_fulldisk "$T_INFER" "$PYTHON" - "$OUT/infer_fulldisk_gpu.json" \
  "${INFER[@]}" <<'PY'
import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--window", type=int, help="an LR window of this side instead of the full disk (smoke)")
ap.add_argument("--tile", type=int)
ap.add_argument("--overlap", type=int)
ap.add_argument("--batch", type=int)
ap.add_argument("--base", type=int)
ap.add_argument("--mult")
ap.add_argument("--steps", type=int)
a = ap.parse_args()
spec = importlib.util.spec_from_file_location("infer_fulldisk", "benchmarks/infer_fulldisk.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)  # defines its helpers; main() is not run
from cloudsr_hpc.data.geometry import SEVIRI_FULL_DISK as FD  # noqa: E402

cuda = torch.cuda.is_available()
mult = tuple(int(m) for m in a.mult.split(","))
res = {"settings": {**{k: v for k, v in vars(a).items() if k != "out"}, "stages": "cascade",
                    "pair": "seviri_viirs", "precision": "auto (bf16 on GPU)"},
       "device_name": torch.cuda.get_device_name(0) if cuda else "cpu"}
with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    ck = {f"{k}_checkpoint": str(bench.make_export(tmp / k, stage=s, base=a.base, mult=mult, steps=a.steps))
          for k, s in (("stage1", 1), ("stage2", 2))}
    sets = [f"tile_lr={a.tile}", f"overlap_lr={a.overlap}", f"batch_size={a.batch}", "stages=cascade",
            "quicklook=false", *(f"{k}={v}" for k, v in ck.items())]
    grid = FD if a.window is None else FD.window(FD.full_rows // 2 - a.window // 2, 0, a.window, a.window)
    t0 = time.perf_counter()
    scene = bench.cloud_scene(grid, tmp / "LR.nc", seed=1)
    res["scene_write_s"] = round(time.perf_counter() - t0, 2)
    res["lr_file_bytes"] = scene.stat().st_size
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    g = bench.in_process(sets, scene, tmp / "out")
    res.update({"full_disk": a.window is None, "seconds_per_scene": g["pipeline_s"], **g})
    res["cuda_max_memory_allocated_mb"] = (round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
                                           if cuda else None)
Path(a.out).write_text(json.dumps(res, indent=2))
print(json.dumps(res, indent=2))
PY

part train_large_compiled "$T_COMPILED" "$PYTHON" benchmarks/train_throughput.py --config configs/stage2_large.yaml \
  "${T_LARGE[@]}" $([ "$SMOKE" = 1 ] && echo --set train.compile=false) --out "$OUT/train_large_compiled.json"

"$PYTHON" - "$OUT" <<'PY' || echo "summary failed (parts.tsv has the exit codes)"
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
parts = []
for line in (out / "parts.tsv").read_text().splitlines():
    name, rc, sec, cmd = line.split("\t", 3)
    parts.append({"part": name, "exit_code": int(rc), "timed_out": rc in ("124", "137"),
                  "seconds": round(float(sec), 1), "command": cmd, "log": f"{name}.log"})
results = {}
for f in sorted(out.glob("*.json")):
    if f.name != "summary.json":
        try:
            results[f.name] = json.loads(f.read_text())
        except ValueError:
            results[f.name] = "unreadable"
keys = ("device_name", "precision", "params_m", "batch", "patch_hr", "s_per_iter", "samples_per_s",
        "gflop_per_step", "achieved_tflops", "mfu", "max_memory_allocated_mb", "seconds_per_scene",
        "forward_s", "overhead", "output_mpx_per_s", "pipeline_seconds", "cuda_max_memory_allocated_mb")
summary = {"parts": parts, "ok": all(p["exit_code"] == 0 for p in parts),
           "figures": {name: {k: r[k] for k in keys if k in r} for name, r in results.items()
                       if isinstance(r, dict)}}
(out / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))
PY

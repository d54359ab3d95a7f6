#!/usr/bin/env bash
# Create .venv and install CloudSR-HPC with everything it needs (idempotent).
# torch is pinned with an upper bound: an unbounded requirement may pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  .venv/bin/pip install -q "torch==2.14.1" "torchvision==0.29.1"
fi
.venv/bin/pip install -q -e ".[hpc,eval,test]"
.venv/bin/python -c "import cloudsr_hpc, satpy, torch; print('cloudsr-hpc', cloudsr_hpc.__version__, 'torch', torch.__version__, 'satpy', satpy.__version__)"

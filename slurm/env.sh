# The common preamble of the slurm/*.sh job scripts, sourced by each of them once it has found the
# checkout (the same four "find the checkout" lines head every script: Slurm runs a copy of the batch
# script from its spool directory, so the script's own path ($0) says nothing about where the
# project is).  Those lines try, in this order: $CLOUDSR_ROOT; the path of the submitted script as
# Slurm recorded it (scontrol show job $SLURM_JOB_ID: Command=, two levels up, relative to
# $SLURM_SUBMIT_DIR if it was relative); $SLURM_SUBMIT_DIR; the script's own directory's parent
# (when run by hand with bash).  So `sbatch /abs/path/slurm/infer.sh ...` works from any directory.
#
# Here: the checkout is this file's grandparent (exported as CLOUDSR_ROOT for srun'd ranks); the
# job runs in it (relative paths in arguments and configs are the checkout's).
#
# Environment (all optional; sbatch passes the submitting shell's environment to the job):
#   CLOUDSR_ROOT   the checkout; if set it must be this one
#   CLOUDSR_SETUP  shell lines evaluated first: module load ..., conda activate ...,
#                  source venv/bin/activate ('submit ... --cluster PROFILE' sets it from the
#                  profile's setup: list; for plain sbatch export it yourself)
#   PYTHON         the interpreter; default: see below
#   CLOUDSR_GPU_OVERSUBSCRIBE=1  let more ranks than GPUs share a node's GPUs (cloudsr_hpc.core.devices)
_here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P) || exit 1
if [ -n "${CLOUDSR_ROOT:-}" ] && [ "$(cd "$CLOUDSR_ROOT" 2>/dev/null && pwd -P)" != "$_here" ]; then
  echo "cloudsr-hpc: CLOUDSR_ROOT=$CLOUDSR_ROOT is not a CloudSR-HPC checkout (no slurm/env.sh there)" >&2
  exit 1
fi
export CLOUDSR_ROOT=$_here
cd "$CLOUDSR_ROOT" || exit 1

if [ -n "${CLOUDSR_SETUP:-}" ]; then
  eval "$CLOUDSR_SETUP" || { echo "cloudsr-hpc: CLOUDSR_SETUP failed: $CLOUDSR_SETUP" >&2; exit 1; }
fi

# The interpreter comes from the job's environment, as the site set it up: $PYTHON if set, else the
# python on PATH after CLOUDSR_SETUP (its module load / conda activate / venv activate takes effect
# here).  A login shell's PATH on a compute node often holds only the system python, which lacks
# the project's dependencies: a python on PATH counts only if it has cloudsr_hpc installed (checked
# from / so that the checkout in the working directory does not make every python pass), else the
# checkout's own .venv/bin/python (scripts/setup.sh) is used.
if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
else
  PY=$(command -v python || command -v python3 || true)
  if [ -z "$PY" ] || ! (cd / && "$PY" -c 'import cloudsr_hpc') >/dev/null 2>&1; then
    PY=$CLOUDSR_ROOT/.venv/bin/python
  fi
fi
if ! command -v "$PY" >/dev/null 2>&1; then
  echo "cloudsr-hpc: no python with cloudsr_hpc: set PYTHON, or CLOUDSR_SETUP to activate its environment" >&2
  exit 1
fi
echo "cloudsr-hpc: checkout $CLOUDSR_ROOT, python $PY"
# one rank per task, its threads (torch intra-op, OpenMP) on the task's CPUs: --cpus-per-task of the
# job (its input workers are processes of their own, one thread each)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
# srun does not inherit sbatch's --cpus-per-task (Slurm 22.05+): without this every rank of the
# scripts' srun step would be confined to one CPU
if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then export SRUN_CPUS_PER_TASK=${SRUN_CPUS_PER_TASK:-$SLURM_CPUS_PER_TASK}; fi
# glibc's allocator: keep freed memory for reuse instead of mapping every large buffer (tile
# batches, activations, accumulators) afresh and faulting its pages in again -- on a demo scene that
# kernel work cost as much time as the model (cloudsr_hpc.cli.reuse_heap, which every
# entry point also applies; CLOUDSR_MALLOC=system keeps glibc's defaults)
if [ "${CLOUDSR_MALLOC:-reuse}" != system ]; then
  export MALLOC_MMAP_MAX_=${MALLOC_MMAP_MAX_:-0} MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-2147483647}
fi

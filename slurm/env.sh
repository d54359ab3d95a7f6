# Sourced by the slurm/*.sh job scripts (after they cd into the project): site set-up, the
# interpreter, threads.  Environment: CLOUDSR_SETUP (a line to eval first: module load ...,
# conda activate ...), PYTHON (default: .venv/bin/python of the project).
if [ -n "${CLOUDSR_SETUP:-}" ]; then eval "$CLOUDSR_SETUP"; fi
PY=${PYTHON:-$PWD/.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}

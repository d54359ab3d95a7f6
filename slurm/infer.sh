#!/usr/bin/env bash
# Inference of one or more dates, all ranks sharing each scene (MPI row bands):
#   sbatch slurm/infer.sh --date 2024-06-01T12:00 [--end ...] [--archive DIR] [--out DIR] [--set key=value ...]
#   sbatch --ntasks-per-node=4 --gpus-per-node=4 slurm/infer.sh --date ...       # GPU site
# Arguments go to python -m cloudsr_hpc.infer.  Requeue-safe: finished scenes verify and are kept;
# SIGUSR1 (60 s before the limit) stops cleanly and the job requeues itself.
# Environment: CLOUDSR_ROOT, PYTHON, CLOUDSR_SETUP (as slurm/train.sh), CLOUDSR_SRUN_MPI (default pmi2).
#SBATCH --job-name=cloudsr-infer
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=2
#SBATCH --cpus-per-task=1
#SBATCH --time=01:00:00
#SBATCH --signal=USR1@60
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=cloudsr-infer-%j.out
set -uo pipefail
ROOT=${CLOUDSR_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
cd "$ROOT" || exit 1
source slurm/env.sh
echo "cloudsr-hpc infer: job ${SLURM_JOB_ID:-?} restart ${SLURM_RESTART_COUNT:-0} tasks ${SLURM_NTASKS:-1}: $*"
rc=0
# on --signal=USR1@60 every rank abandons the scene in hand cleanly and exits 75: requeue the job,
# whose rerun keeps the finished outputs (they verify) and does the rest
srun --mpi="${CLOUDSR_SRUN_MPI:-pmi2}" --kill-on-bad-exit=1 "$PY" -m cloudsr_hpc.infer --quiet "$@" || rc=$?
if [ "$rc" -eq 75 ] && [ -n "${SLURM_JOB_ID:-}" ]; then
  echo "stopped before the time limit: requeueing job $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
fi
exit "$rc"

#!/usr/bin/env bash
# Inference of one or more dates, all ranks sharing each scene (MPI row bands), from any directory:
#   sbatch [/path/to/]slurm/infer.sh --date 2024-06-01T12:00 [--end ...] [--archive DIR] [--out DIR] [--set key=value ...]
#   sbatch --ntasks-per-node=4 --gpus-per-node=4 --gpu-bind=single:1 --mem=16G slurm/infer.sh --date ...  # GPU site: a rank per GPU
# Arguments go to python -m cloudsr_hpc.infer (relative paths are the checkout's: the job runs there).
# --mem: a rank of the cascade peaks at 2.6-3.1 GB; 8G is two ranks per node (scale it with the ranks).
# Requeue-safe: finished scenes verify and are kept; SIGUSR1 (60 s before the limit) stops cleanly
# and the job requeues itself.
# Environment: CLOUDSR_ROOT, CLOUDSR_SETUP, PYTHON (slurm/env.sh), CLOUDSR_SRUN_MPI (default pmi2).
#SBATCH --job-name=cloudsr-infer
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=2
#SBATCH --cpus-per-task=1
#SBATCH --mem=8G
#SBATCH --time=01:00:00
#SBATCH --signal=USR1@60
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=cloudsr-infer-%j.out
set -uo pipefail
# find the checkout (Slurm runs a spool copy of this script, so $0 cannot tell: see slurm/env.sh)
_c=$(scontrol show job "${SLURM_JOB_ID:-none}" 2>/dev/null | sed -n 's|^ *Command=\(.*\)/slurm/[^/]*\.sh\( .*\)\{0,1\}$|\1|p')
case $_c in /* | "") ;; *) _c=${SLURM_SUBMIT_DIR:-.}/$_c ;; esac
for _r in "${CLOUDSR_ROOT:-}" "$_c" "${SLURM_SUBMIT_DIR:-}" "$(dirname "$0")/.."; do [ -f "$_r/slurm/env.sh" ] && break; _r=; done
[ -n "$_r" ] || { echo "cloudsr-hpc: checkout not found (set CLOUDSR_ROOT)" >&2; exit 1; }
source "$_r/slurm/env.sh"
echo "cloudsr-hpc infer: job ${SLURM_JOB_ID:-?} restart ${SLURM_RESTART_COUNT:-0} tasks ${SLURM_NTASKS:-1}: $*"
rc=0
# on --signal=USR1@60 every rank abandons the scene in hand cleanly and exits 75: requeue the job,
# whose rerun keeps the finished outputs (they verify) and does the rest
srun --mpi="${CLOUDSR_SRUN_MPI:-pmi2}" --kill-on-bad-exit=1 "$PY" -m cloudsr_hpc.infer --quiet "$@" || rc=$?
if [ "$rc" -eq 75 ] && [ -n "${SLURM_JOB_ID:-}" ]; then
  echo "stopped before the time limit: requeueing job $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID" && exit 0  # refused under --no-requeue (jobs/infer.yaml requeue: false)
fi
exit "$rc"

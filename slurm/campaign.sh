#!/usr/bin/env bash
# Campaign workers as a job array: every task claims whole scenes from the campaign's ledger until
# none is left (create the campaign first: python -m cloudsr_hpc.submit campaign ... --dry-run shows it).
#   sbatch --array=0-7%4 slurm/campaign.sh runs/campaigns/NAME
# A cancelled or preempted task loses only its claim, which 'submit campaign resume NAME' (or the
# requeued task itself) returns to the queue.
# Environment: CLOUDSR_ROOT, PYTHON, CLOUDSR_SETUP (as slurm/train.sh).
#SBATCH --job-name=cloudsr-campaign
#SBATCH --array=0-3%2
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --time=01:00:00
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=cloudsr-campaign-%A_%a.out
set -uo pipefail
ROOT=${CLOUDSR_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
cd "$ROOT" || exit 1
source slurm/env.sh
[ $# -eq 1 ] || { echo "usage: sbatch slurm/campaign.sh CAMPAIGN_DIR" >&2; exit 2; }
echo "cloudsr-hpc campaign worker: job ${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID:-?}} task ${SLURM_ARRAY_TASK_ID:-0} restart ${SLURM_RESTART_COUNT:-0}"
exec "$PY" -m cloudsr_hpc.orchestration.worker "$1"

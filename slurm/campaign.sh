#!/usr/bin/env bash
# Campaign workers as a job array: every task claims whole scenes from the campaign's ledger until
# none is left.  Create the campaign with 'python -m cloudsr_hpc.submit campaign ... --workers 0': it
# prints the command to start them, the array sized from the campaign (one task per scene to do, at
# most the campaign's workers, '%' the profile's array_parallelism), e.g.
#   sbatch --array=0-7%4 --mem=4G ... /abs/path/slurm/campaign.sh runs/campaigns/NAME
# Without --array a plain 'sbatch slurm/campaign.sh DIR' starts one worker.  Works from any directory.
# --mem: a worker (the cascade on one scene) peaks at 2.6-3.1 GB.
# 90 s before the time limit (--signal=B:USR2@90, jobs/campaign.yaml) the batch shell tells the worker
# to stop (SIGTERM: it gives the scene in hand back uncounted) and requeues the task, which takes up
# the campaign again.  scancel or a preemption (SIGTERM) gives the scene back without a requeue;
# 'submit campaign resume NAME' starts workers again.
# Environment: CLOUDSR_ROOT, CLOUDSR_SETUP, PYTHON (slurm/env.sh).
#SBATCH --job-name=cloudsr-campaign
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --mem=4G
#SBATCH --time=01:00:00
#SBATCH --signal=B:USR2@90
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=cloudsr-campaign-%A_%a.out
set -uo pipefail
[ $# -eq 1 ] || { echo "usage: sbatch slurm/campaign.sh CAMPAIGN_DIR" >&2; exit 2; }
# CAMPAIGN_DIR may be relative to the directory sbatch ran in (the job starts there)
cdir=$(cd "$1" 2>/dev/null && pwd -P) || { echo "cloudsr-hpc: $1: no such campaign directory" >&2; exit 2; }
# find the checkout (Slurm runs a spool copy of this script, so $0 cannot tell: see slurm/env.sh)
_c=$(scontrol show job "${SLURM_JOB_ID:-none}" 2>/dev/null | sed -n 's|^ *Command=\(.*\)/slurm/[^/]*\.sh\( .*\)\{0,1\}$|\1|p')
case $_c in /* | "") ;; *) _c=${SLURM_SUBMIT_DIR:-.}/$_c ;; esac
for _r in "${CLOUDSR_ROOT:-}" "$_c" "${SLURM_SUBMIT_DIR:-}" "$(dirname "$0")/.."; do [ -f "$_r/slurm/env.sh" ] && break; _r=; done
[ -n "$_r" ] || { echo "cloudsr-hpc: checkout not found (set CLOUDSR_ROOT)" >&2; exit 1; }
source "$_r/slurm/env.sh"
echo "cloudsr-hpc campaign worker: job ${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID:-?}} task ${SLURM_ARRAY_TASK_ID:-0} restart ${SLURM_RESTART_COUNT:-0}"
"$PY" -m cloudsr_hpc.orchestration.worker "$cdir" &
worker=$!
requeue=0
trap 'requeue=1; kill -TERM "$worker" 2>/dev/null' USR2
trap 'kill -TERM "$worker" 2>/dev/null' TERM
rc=0
wait "$worker" || rc=$?
while [ "$rc" -gt 128 ] && kill -0 "$worker" 2>/dev/null; do  # a trap interrupted the wait
  rc=0
  wait "$worker" || rc=$?
done
if [ "$requeue" -eq 1 ] && [ -n "${SLURM_JOB_ID:-}" ]; then
  echo "stopped before the time limit: requeueing task $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID" && exit 0  # refused under --no-requeue (jobs/campaign.yaml requeue: false)
fi
exit "$rc"

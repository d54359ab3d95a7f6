#!/usr/bin/env bash
# Stage 2 training: sbatch [/path/to/]slurm/train_stage2.sh [--set key=value ...]   (from any directory)
# GPU sites add their GPUs on the command line (kept out of #SBATCH so the script runs unchanged on
# CPU-only clusters), one rank per GPU, e.g. (or: submit train --cluster PROFILE, configs/cluster/example-gpu.yaml)
#   sbatch --nodes=4 --ntasks-per-node=4 --gpus-per-node=4 --gpu-bind=single:1 --cpus-per-task=8 --mem=64G slurm/train_stage2.sh
# --mem: a rank peaks at about 3 GB; 8G is two ranks per node (scale it with --ntasks-per-node).
# Environment: CLOUDSR_ROOT, CLOUDSR_SETUP, PYTHON (slurm/env.sh), CONFIG (default configs/stage2.yaml).
#SBATCH --job-name=cloudsr-stage2
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=2
#SBATCH --cpus-per-task=1
#SBATCH --mem=8G
#SBATCH --time=02:00:00
#SBATCH --signal=USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=cloudsr-stage2-%j.out
set -uo pipefail
export CONFIG=${CONFIG:-configs/stage2.yaml}
# find the checkout (Slurm runs a spool copy of this script, so $0 cannot tell: see slurm/env.sh)
_c=$(scontrol show job "${SLURM_JOB_ID:-none}" 2>/dev/null | sed -n 's|^ *Command=\(.*\)/slurm/[^/]*\.sh\( .*\)\{0,1\}$|\1|p')
case $_c in /* | "") ;; *) _c=${SLURM_SUBMIT_DIR:-.}/$_c ;; esac
for _r in "${CLOUDSR_ROOT:-}" "$_c" "${SLURM_SUBMIT_DIR:-}" "$(dirname "$0")/.."; do [ -f "$_r/slurm/env.sh" ] && break; _r=; done
[ -n "$_r" ] || { echo "cloudsr-hpc: checkout not found (set CLOUDSR_ROOT)" >&2; exit 1; }
source "$_r/slurm/env.sh"
source slurm/train.sh

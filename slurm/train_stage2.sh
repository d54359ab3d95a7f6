#!/usr/bin/env bash
# Stage 2 training: sbatch slurm/train_stage2.sh [--set key=value ...]
# GPU sites add their GPUs on the command line (kept out of #SBATCH so the script runs unchanged on
# CPU-only clusters): sbatch --nodes=4 --ntasks-per-node=4 --gpus-per-node=4 slurm/train_stage2.sh
#SBATCH --job-name=cloudsr-stage2
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=2
#SBATCH --cpus-per-task=1
#SBATCH --time=02:00:00
#SBATCH --signal=USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=cloudsr-stage2-%j.out
export CONFIG=${CONFIG:-configs/stage2.yaml}
exec bash "${CLOUDSR_ROOT:-${SLURM_SUBMIT_DIR:-.}}/slurm/train.sh" "$@"

#!/usr/bin/env bash
# Common body of slurm/train_stage{1,2}.sh (sourced by them after slurm/env.sh; not submitted on its
# own): one rank per task (per GPU on GPU nodes), launched by srun; rank/world/master come from the
# Slurm job (cloudsr_hpc.training.distributed).  Exit code 75 from the trainer means "checkpointed
# after SIGUSR1/SIGTERM": the job requeues itself and resumes.
#
# Environment (all optional): CLOUDSR_ROOT, CLOUDSR_SETUP, PYTHON (see slurm/env.sh); CONFIG, the
# stage YAML (set by the stage scripts); TORCH_EXTENSIONS_DIR.
# Extra arguments are passed to the trainer, e.g.  sbatch slurm/train_stage1.sh --set train.steps=500
if [ -z "${PY:-}" ] || [ -z "${CONFIG:-}" ]; then
  echo "slurm/train.sh is the body of slurm/train_stage1.sh and train_stage2.sh: submit one of those" >&2
  exit 2
fi
# compiled DeepSpeed ops are cached per user, never rebuilt per job (compute nodes: no internet needed)
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$HOME/.cache/cloudsr_hpc/torch_extensions}
echo "cloudsr-hpc train: job ${SLURM_JOB_ID:-?} restart ${SLURM_RESTART_COUNT:-0} nodes ${SLURM_JOB_NUM_NODES:-1} tasks ${SLURM_NTASKS:-1} config ${CONFIG}"
rc=0
# no --kill-on-bad-exit: after a signal every rank saves and exits 75, and srun must wait for all
# of them (a crashed rank is caught by the process-group timeout instead)
srun "$PY" -m cloudsr_hpc.train --config "$CONFIG" "$@" || rc=$?
if [ "$rc" -eq 75 ] && [ -n "${SLURM_JOB_ID:-}" ]; then
  echo "checkpointed after a signal: requeueing job $SLURM_JOB_ID"
  # refused when the job was submitted with --no-requeue (jobs/train.yaml requeue: false): exit 75
  scontrol requeue "$SLURM_JOB_ID" && exit 0
fi
exit "$rc"

"""One rank per GPU: which of the visible GPUs a rank drives (or none: the CPU).

Two ways a site hands GPUs to the ranks of a node, both handled by :func:`device_index`:

* bound (``srun --gpus-per-task=1``, ``--gpu-bind=single:1`` / ``closest`` / ``map_gpu:...``, or a
  launcher wrapper that sets ``CUDA_VISIBLE_DEVICES`` per rank): every rank sees its own device(s)
  only, and drives the first, index 0;
* unbound (``--gpus-per-node=N`` without binding, ``torchrun``, ``mpiexec``): every rank sees all the
  node's GPUs and drives the one at its local rank.

More ranks on a node than GPUs for them is refused (:class:`~cloudsr_hpc.errors.ConfigError` naming
the counts) instead of silently stacking ranks on one GPU (``local_rank % n``: contended memory and
compute, NCCL refusing two ranks on one device).  ``CLOUDSR_GPU_OVERSUBSCRIBE=1`` allows it on
purpose (tests of a many-rank layout on a small node).  With no GPU visible the answer is None.

Pure functions of counts and an environment mapping (no torch): the callers pass
``torch.cuda.device_count()``.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping

from ..errors import ConfigError

OVERSUBSCRIBE_VAR = "CLOUDSR_GPU_OVERSUBSCRIBE"
# ranks on this node, as each launcher says it (first found wins); the Slurm ones only inside an srun step
LOCAL_SIZE_VARS = ("LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "PALS_LOCAL_SIZE",
                   "PMI_LOCAL_SIZE")
SLURM_LOCAL_SIZE_VARS = ("SLURM_STEP_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE")
VISIBLE_VARS = ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES")


def _tasks_per_node(value: str, node: int | None) -> int | None:
    """Slurm's ``2(x3),1`` (2 tasks on each of 3 nodes, then 1): this node's count, else the largest."""
    counts: list[int] = []
    for part in value.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if not m:
            return None
        counts += [int(m[1])] * int(m[2] or 1)
    if not counts:
        return None
    return counts[node] if node is not None and 0 <= node < len(counts) else max(counts)


def local_size(env: Mapping[str, str] | None = None) -> int | None:
    """The ranks on this node as the launcher exports it (torchrun, Open MPI, MPICH/Hydra, Cray PALS;
    Slurm's inside an srun step), None if none says."""
    env = os.environ if env is None else env
    for var in LOCAL_SIZE_VARS:
        if str(env.get(var, "")).strip().isdigit():
            return int(env[var])
    if "SLURM_STEP_ID" in env:  # the batch shell itself is one process, whatever the job's tasks
        node = env.get("SLURM_NODEID", "")
        for var in SLURM_LOCAL_SIZE_VARS:
            n = _tasks_per_node(env[var], int(node) if node.isdigit() else None) if env.get(var) else None
            if n:
                return n
    return None


def node_gpus(visible: int, env: Mapping[str, str] | None = None) -> int | None:
    """GPUs this node gives the job's ranks together: Slurm's ``SLURM_GPUS_ON_NODE`` (the step's
    GPUs on this node, however they are bound); else ``visible`` when nothing restricted what this
    process sees (no ``CUDA_VISIBLE_DEVICES``: it sees the whole machine); else None (unknown: a
    launcher or wrapper chose this process's devices)."""
    env = os.environ if env is None else env
    m = re.search(r"(\d+)", str(env.get("SLURM_GPUS_ON_NODE", "")).rsplit(":", 1)[-1])
    if m and int(m[1]) > 0:  # 0: a GPU node's CPU job without device limits; nothing to go by
        return int(m[1])
    if not any(var in env for var in VISIBLE_VARS):
        return visible
    return None


def device_index(local_rank: int, local_ranks: int | None, visible: int, gpus_on_node: int | None = None,
                 oversubscribe: bool = False) -> int | None:
    """The index (among the visible devices) of the GPU that rank ``local_rank`` of ``local_ranks`` on
    this node drives; None without a visible GPU (the CPU).

    ``visible``: devices this process sees; ``gpus_on_node``: GPUs the node gives all its ranks
    (:func:`node_gpus`; None: unknown).  A rank that sees fewer than the node's GPUs (or exactly one)
    is bound and drives index 0; otherwise it sees them all and drives index ``local_rank``.  More
    ranks than GPUs: :class:`ConfigError` naming both counts, unless ``oversubscribe``."""
    if visible <= 0:
        return None
    if local_rank < 0:
        raise ConfigError(f"local rank {local_rank}: must be >= 0")
    ranks = max(local_ranks or 1, local_rank + 1)
    bound = visible == 1 or (gpus_on_node is not None and visible < gpus_on_node)
    gpus = gpus_on_node if gpus_on_node is not None else (None if bound else visible)
    if gpus is not None and ranks > gpus and not oversubscribe:
        raise ConfigError(
            f"{ranks} ranks on this node but {gpus} GPU(s) for them "
            f"({visible} visible to rank {local_rank}): "
            f"one rank per GPU -- ask for as many tasks per node as GPUs (sbatch --ntasks-per-node={gpus} "
            f"or --gpus-per-task=1, fewer --ranks, more --nodes), or set {OVERSUBSCRIBE_VAR}=1 to share GPUs "
            f"on purpose")
    return 0 if bound else local_rank % visible


def rank_device_index(local_rank: int | None, visible: int, env: Mapping[str, str] | None = None,
                      local_ranks: int | None = None) -> int | None:
    """:func:`device_index` with the counts taken from the launcher's environment (``env``, default
    ``os.environ``): ``local_rank`` None is a process alone (rank 0 of 1); ``local_ranks`` None: the
    launcher's count (:func:`local_size`)."""
    env = os.environ if env is None else env
    if local_rank is None:
        local_rank, local_ranks = 0, 1
    elif local_ranks is None:
        local_ranks = local_size(env)
    return device_index(local_rank, local_ranks, visible, node_gpus(visible, env),
                        oversubscribe=oversubscribed(env))


def oversubscribed(env: Mapping[str, str] | None = None) -> bool:
    """Whether ``CLOUDSR_GPU_OVERSUBSCRIBE`` (1/true/yes) lets ranks share GPUs on purpose."""
    env = os.environ if env is None else env
    return str(env.get(OVERSUBSCRIBE_VAR, "")).strip().lower() in ("1", "true", "yes")

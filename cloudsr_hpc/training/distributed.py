"""Process-group set-up for every launcher: plain python, torchrun, deepspeed, mpiexec, srun.

torchrun / the deepspeed launcher export RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT; under
srun, submitit's ``TorchDistributedEnvironment`` derives them from the Slurm job (first node of
``scontrol show hostnames`` as master); under mpiexec, DeepSpeed's MPI discovery does.  A plain
``python`` run is a world of one.  GPUs use NCCL, CPUs gloo; each rank drives one GPU of its node
(:mod:`cloudsr_hpc.core.devices`: bound or unbound, never more ranks than GPUs).
"""
from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass

import torch

from ..core.devices import local_size, rank_device_index


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _export_slurm_env() -> None:
    if ("RANK" in os.environ or "SLURM_PROCID" not in os.environ
            or int(os.environ.get("SLURM_NTASKS", "1")) < 1):
        return
    from submitit.helpers import TorchDistributedEnvironment
    os.environ.setdefault("SUBMITIT_EXECUTOR", "slurm")  # submitit detects its environment by this name
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def init_distributed(port: int = 29500, timeout_min: float = 15.0) -> DistInfo:
    import deepspeed
    _export_slurm_env()
    mpi = "OMPI_COMM_WORLD_SIZE" in os.environ or "PMI_SIZE" in os.environ
    if "RANK" not in os.environ and not mpi:
        os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(port))
    cuda = torch.cuda.is_available()
    if not torch.distributed.is_initialized():
        # a dead rank must not leave the others blocked in a collective for the default 30 min
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", auto_mpi_discovery=mpi,
                                   verbose=False, timeout=dt.timedelta(minutes=timeout_min))
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        # one rank per GPU (bound or unbound); more ranks than GPUs is a ConfigError naming the counts
        n = local_size()
        torch.cuda.set_device(rank_device_index(local, torch.cuda.device_count(),
                                                local_ranks=min(n, world) if n else None))
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    return DistInfo(rank, world, local, device)

"""The ranks of an inference job: mpi4py's COMM_WORLD under ``mpiexec``/``srun``, one rank otherwise.

Only the few collectives the pipeline needs are used, behind one small interface, so the same
code runs serially (no MPI library needed) and sharded.  Failures are agreed on collectively
(:meth:`Ranks.agree`) instead of letting one rank raise while the others wait in a barrier.
"""
from __future__ import annotations

import os

import numpy as np


class Ranks:
    """rank/size plus bcast, gather, agree, barrier and a few point-to-point transfers over
    mpi4py (or trivially for one rank)."""

    def __init__(self, comm=None):
        self.comm = comm
        self.rank = comm.Get_rank() if comm is not None else 0
        self.size = comm.Get_size() if comm is not None else 1

    @property
    def local_rank(self) -> int:
        for var in ("LOCAL_RANK", "MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "PALS_LOCAL_RANKID",
                    "PMI_LOCAL_RANK", "SLURM_LOCALID"):
            if var in os.environ:
                return int(os.environ[var])
        return self.rank

    def bcast(self, obj, root: int = 0):
        return obj if self.comm is None else self.comm.bcast(obj, root=root)

    def bcast_array(self, arr: np.ndarray | None, root: int = 0) -> np.ndarray:
        """A numpy array from ``root`` (buffer transfer, no pickling of the data)."""
        if self.comm is None:
            return arr
        meta = self.comm.bcast((arr.shape, arr.dtype.str) if self.rank == root else None, root=root)
        if self.rank != root:
            arr = np.empty(meta[0], np.dtype(meta[1]))
        self.comm.Bcast(np.ascontiguousarray(arr), root=root)
        return arr

    def send_array(self, arr: np.ndarray, dest: int) -> None:
        self.comm.send((arr.shape, arr.dtype.str), dest=dest)
        self.comm.Send(np.ascontiguousarray(arr), dest=dest)

    def recv_array(self, source: int = 0) -> np.ndarray:
        shape, dtype = self.comm.recv(source=source)
        arr = np.empty(shape, np.dtype(dtype))
        self.comm.Recv(arr, source=source)
        return arr

    # -- point to point, non-blocking sends: tiles shared across a band boundary (halo.py)
    def isend_array(self, arr: np.ndarray, dest: int, tag: int):
        """Start sending ``arr`` (its shape known to the receiver); keep ``arr`` alive until the
        returned request is waited for."""
        return self.comm.Isend(arr, dest=dest, tag=tag)

    def recv_any(self, source: int) -> tuple[int, np.ndarray]:
        """The next message from ``source``, whatever its kind (tag) and size: (tag, float32 data)."""
        from mpi4py import MPI
        status = MPI.Status()
        self.comm.Probe(source=source, tag=MPI.ANY_TAG, status=status)
        data = np.empty(status.Get_count(MPI.FLOAT), np.float32)
        self.comm.Recv(data, source=source, tag=status.Get_tag())
        return status.Get_tag(), data

    @staticmethod
    def wait_all(requests: list) -> None:
        for q in requests:
            q.Wait()

    def gather(self, obj, root: int = 0):
        return [obj] if self.comm is None else self.comm.gather(obj, root=root)

    def barrier(self) -> None:
        if self.comm is not None:
            self.comm.Barrier()

    def agree(self, error: str | None) -> str | None:
        """Every rank passes its error (or None); all get the first rank's error, or None if all succeeded."""
        errors = [error] if self.comm is None else self.comm.allgather(error)
        return next((e for e in errors if e), None)


def world() -> Ranks:
    """COMM_WORLD when launched by an MPI launcher with more than one rank, else a single rank.

    mpi4py is imported only then: a serial run needs no MPI library, and a site whose mpi4py
    is built against another MPI than the launcher's still runs serial jobs."""
    launched = any(v in os.environ for v in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK",
                                             "MPI_LOCALNRANKS", "HYDRA_CONTROL_FD", "PMI_FD"))
    srun_tasks = int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) if "SLURM_STEP_ID" in os.environ else 1
    if not launched and srun_tasks == 1:
        return Ranks()
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    if srun_tasks > 1 and comm.Get_size() != srun_tasks:
        # every task would think it is the only one and write the same file
        from ..errors import ConfigError
        raise ConfigError(f"srun started {srun_tasks} tasks but MPI sees {comm.Get_size()}: launch with "
                          f"'srun --mpi=pmi2' (or pmix) so that mpi4py's MPI wires up, or use mpiexec")
    return Ranks(comm if comm.Get_size() > 1 else None)

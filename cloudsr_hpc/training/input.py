"""The training input pipeline: a ``DataLoader`` over the training set in the trainer's step order.

:class:`~cloudsr_hpc.data.datasets.StepBatchSampler` (in the training process) decides which
samples each micro-batch holds; ``train.num_workers`` worker processes (0: the training process
itself) read the HDF5 shards -- each worker opens its own handles -- run Stage 2's degradation and
collate, ``train.prefetch_factor`` batches ahead each; batches land in pinned memory when the
device is a GPU and are copied without blocking.  A batch depends only on (seed, step, micro, rank,
world) and the degradation seed, never on the number of workers, so runs reproduce bitwise and a
resumed run sees the batches an uninterrupted one would.

Workers outlive a SIGTERM / SIGUSR1 sent to every process of the job (Slurm's preemption and
time-limit warnings): the training process checkpoints at the next step boundary and needs them
until then; it stops them itself (:meth:`TrainInput.close`, at the end of ``Trainer.fit``).
"""
from __future__ import annotations

import functools
import os
import signal
import threading

import torch
from torch.utils.data import DataLoader, Dataset

from ..data.datasets import StepBatchSampler, collate_samples, fresh_worker_handles
from ..schema import TrainConfig

_SHIELDED = (signal.SIGTERM, signal.SIGUSR1)


def _init_worker(parent: int, worker_id: int) -> None:
    """``worker_init_fn``: own HDF5 handles, and the job's SIGTERM / SIGUSR1 left to the training
    process -- a worker dying of them would abort the step before its checkpoint.  A SIGTERM from
    the training process itself (how the DataLoader ends a worker that does not stop) still ends it."""
    fresh_worker_handles(worker_id)
    signal.pthread_sigmask(signal.SIG_BLOCK, _SHIELDED)  # threads started from here on inherit it

    def wait() -> None:
        while True:
            info = signal.sigwaitinfo(_SHIELDED)
            if info.si_signo == signal.SIGTERM and info.si_pid == parent:
                os._exit(0)

    threading.Thread(target=wait, name="worker-signals", daemon=True).start()


def step_sampler(dataset: Dataset, train: TrainConfig, rank: int, world: int, start: int = 0,
                 stop: int | None = None) -> StepBatchSampler:
    """The batch sampler of this rank for steps ``[start, stop)`` (``stop`` defaults to ``train.steps``)."""
    return StepBatchSampler(len(dataset), rank=rank, world=world, seed=train.seed,
                            batch_size=train.batch_size, grad_accum=train.grad_accum, start=start,
                            stop=train.steps if stop is None else stop)


def make_loader(dataset: Dataset, sampler: StepBatchSampler, num_workers: int = 0,
                prefetch_factor: int = 2, pin_memory: bool = False) -> DataLoader:
    """The DataLoader of a step sampler: persistent workers when there are any."""
    kw: dict = {}
    if num_workers > 0:
        kw = {"persistent_workers": True, "prefetch_factor": prefetch_factor,
              "worker_init_fn": functools.partial(_init_worker, os.getpid())}
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate_samples,
                      pin_memory=pin_memory, **kw)


class TrainInput:
    """Batches of (step, micro) in order, on ``device``; :meth:`close` stops the workers.

    Asked for another (step, micro) than the next one in order (the step was moved, e.g. by a
    resume, or the run goes past ``train.steps``), it restarts its loader there: the batch is the
    same either way."""

    def __init__(self, dataset: Dataset, train: TrainConfig, rank: int, world: int,
                 device: torch.device | str = "cpu", start: int = 0):
        self.dataset, self.train, self.rank, self.world = dataset, train, rank, world
        self.device = torch.device(device)
        self.pin = self.device.type == "cuda"
        self.loader: DataLoader | None = None
        self._it = None
        self._open(start, max(train.steps, start + 1))

    def _open(self, start: int, stop: int) -> None:
        self.close()
        self.sampler = step_sampler(self.dataset, self.train, self.rank, self.world, start, stop)
        self.loader = make_loader(self.dataset, self.sampler, self.train.num_workers,
                                  self.train.prefetch_factor, self.pin)
        self._it = iter(self.loader)
        self._next = (start, 0)

    def next(self, step: int, micro: int) -> dict[str, torch.Tensor]:
        """The collated micro-batch ``micro`` of global ``step``, on the device."""
        if (step, micro) != self._next or self._it is None or step >= self.sampler.stop:
            self._open(step, max(self.sampler.stop, step + 1))
            for _ in range(micro):
                next(self._it)
        batch = next(self._it)
        self._next = (step, micro + 1) if micro + 1 < self.train.grad_accum else (step + 1, 0)
        return {k: v.to(self.device, non_blocking=self.pin) for k, v in batch.items()}

    def close(self) -> None:
        """Shut the worker processes down now (also what garbage collection of the iterator does)."""
        it, self._it = self._it, None
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        del it
        self.loader = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: the workers are daemonic anyway
            pass

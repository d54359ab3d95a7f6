"""torch Datasets over HDF5 shards, and the rank-aware sampler that streams them.

``PairDataset`` (Stage 1) yields real LR/HR pairs; ``DegradedHRDataset`` (Stage 2) yields HR
patches and an LR made on the fly by :class:`~.degradations.Degradation`, seeded by
``(seed, epoch, index)`` so a sample is the same whatever rank or worker draws it.  Values are
normalised to [-1, 1] with the channel ranges stored in the shards; invalid pixels are 0 with a
0 in the mask.  Ranks split the data with ``torch.utils.data.DistributedSampler`` semantics
(deterministic permutation per epoch from the seed, disjoint per rank).

Training reads through a ``DataLoader`` driven by :class:`StepBatchSampler`: it yields, for every
global step and micro-batch, the ``(index, step)`` keys this rank draws, and a dataset given such a
key degrades the sample for that step -- so worker processes need no ``set_epoch`` from the main
process, and the batches are the same whatever the number of workers.
"""
from __future__ import annotations

import bisect
import json
import math
from collections.abc import Iterator

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler, get_worker_info

from ..core.norm import normalise
from ..core.seeds import seed_from
from ..schema import DegradationConfig
from .degradations import Degradation
from .shards import list_shards, shard_attrs, shard_lengths


def _normalise(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Physical (C, H, W) -> ([-1, 1] with 0 where invalid, per-channel validity), by the one
    normaliser inference and evaluation use (:func:`cloudsr_hpc.core.norm.normalise`)."""
    y, _ = normalise(np.asarray(x, np.float32), lo, hi)
    valid = np.isfinite(y)
    y[~valid] = 0.0
    return torch.from_numpy(y), torch.from_numpy(valid.astype(np.float32))


class _ShardIndex(Dataset):
    kind = "pairs"

    def __init__(self, directory):
        self.shards = list_shards(directory, self.kind)
        self.lengths = shard_lengths(self.shards)
        self.offsets = np.cumsum([0] + self.lengths).tolist()
        self.attrs = shard_attrs(self.shards[0])
        norm = self.attrs["norm_hr"]
        self.lo, self.hi = np.array(norm[0], np.float32), np.array(norm[1], np.float32)
        norm_lr = self.attrs.get("norm_lr", norm)
        self.lo_lr, self.hi_lr = np.array(norm_lr[0], np.float32), np.array(norm_lr[1], np.float32)
        self.scale = int(self.attrs["scale"])
        self._files: dict[int, h5py.File] = {}  # opened lazily, per worker process

    def __len__(self):
        return self.offsets[-1]

    def _locate(self, i: int) -> tuple[h5py.File, int]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        s = bisect.bisect_right(self.offsets, i) - 1
        if s not in self._files:
            self._files[s] = h5py.File(self.shards[s], "r")
        return self._files[s], i - self.offsets[s]

    def __getstate__(self):  # h5py handles do not pickle into DataLoader workers
        d = dict(self.__dict__)
        d["_files"] = {}
        return d

    def _key(self, key) -> tuple[int, int | None]:
        """An index, or an ``(index, step)`` key of :class:`StepBatchSampler` -> (index, step or None)."""
        if isinstance(key, tuple):
            i, step = key
            return int(i), int(step)
        return int(key), None


class PairDataset(_ShardIndex):
    """Stage 1: (lr, lr_mask, hr, hr_mask) from ``pairs-*.h5``."""

    def __getitem__(self, key):
        i, _ = self._key(key)  # real pairs: the same sample whatever the step
        f, j = self._locate(i)
        lr, lr_mask = _normalise(f["lr"][j], self.lo_lr, self.hi_lr)
        hr, hr_mask = _normalise(f["hr"][j], self.lo, self.hi)
        return {"lr": lr, "lr_mask": lr_mask, "hr": hr, "hr_mask": hr_mask, "index": i}


# the 8 symmetries of the square as (quarter turns, mirror); a key of its own in the sample's seed,
# so augmenting leaves the degradation's draws (and an unaugmented run) exactly as they were
DIHEDRAL = [(k, m) for m in (False, True) for k in range(4)]
_AUGMENT_KEY = 0xD18ED


def dihedral(x: torch.Tensor, turns: int, mirror: bool) -> torch.Tensor:
    """(C, H, W) turned by ``turns`` quarter turns, then mirrored left-right; a non-square patch
    keeps its shape (odd turns become half turns)."""
    if x.shape[-1] != x.shape[-2]:
        turns = 2 * (turns % 2)
    x = torch.rot90(x, turns, dims=(-2, -1)) if turns else x
    return x.flip(-1) if mirror else x


class DegradedHRDataset(_ShardIndex):
    """Stage 2: HR patches from ``hr-*.h5`` and an LR synthesised on the fly; with ``augment``
    "dihedral" each HR patch is first turned/mirrored by a symmetry drawn from (seed, step, index)."""
    kind = "hr"

    def __init__(self, directory, degradation: DegradationConfig, epoch: int = 0, augment: str = "none"):
        super().__init__(directory)
        self.degrade = Degradation(degradation, self.scale)
        self.seed = degradation.seed
        self.epoch = epoch
        self.augment = augment

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, key):
        """``i`` (degraded for :meth:`set_epoch`'s epoch) or ``(i, step)`` (degraded for that
        training step, which is what the training loop uses as the epoch)."""
        i, step = self._key(key)
        epoch = self.epoch if step is None else step
        f, j = self._locate(i)
        hr, hr_mask = _normalise(f["hr"][j], self.lo, self.hi)
        if self.augment == "dihedral":
            turns, mirror = DIHEDRAL[seed_from(self.seed, epoch, i, _AUGMENT_KEY) % len(DIHEDRAL)]
            hr, hr_mask = (dihedral(a, turns, mirror).contiguous() for a in (hr, hr_mask))
        g = torch.Generator().manual_seed(seed_from(self.seed, epoch, i))
        lr, lr_mask, params = self.degrade(hr, hr_mask, g)
        return {"lr": lr, "lr_mask": lr_mask, "hr": hr, "hr_mask": hr_mask, "index": i,
                "params": json.dumps(params)}


def rank_sampler(dataset: Dataset, rank: int, world: int, seed: int, epoch: int = 0,
                 shuffle: bool = True) -> DistributedSampler:
    """DistributedSampler with an explicit seed/epoch: every rank sees a disjoint, reproducible slice."""
    s = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed,
                           drop_last=False)
    s.set_epoch(epoch)
    return s


BATCH_KEYS = ("lr", "lr_mask", "hr", "hr_mask")


def collate_samples(items: list[dict]) -> dict[str, torch.Tensor]:
    """Samples -> a batch: ``lr``, ``lr_mask``, ``hr``, ``hr_mask`` stacked along a new first axis."""
    return {k: torch.stack([it[k] for it in items]) for k in BATCH_KEYS}


def fresh_worker_handles(_worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: a forked worker drops the HDF5 handles inherited from the
    training process and opens its own (a spawned one gets none: see ``__getstate__``)."""
    info = get_worker_info()
    if info is not None and isinstance(info.dataset, _ShardIndex):
        info.dataset._files = {}


class StepBatchSampler(Sampler):
    """The training order of one rank as a batch sampler.

    For global step ``s`` in ``[start, stop)`` and micro-batch ``m`` in ``[0, grad_accum)`` it yields
    the ``batch_size`` keys ``(index, s)`` of micro-batch ``m`` of step ``s``: which indices is a pure
    function of (seed, step, micro, rank, world) -- :meth:`indices` -- so a run resumed at step k
    draws exactly what an uninterrupted one draws from step k on.  Steps walk through epochs of
    ``ceil(n / world) // (batch_size * grad_accum)`` steps; epoch e is the ``DistributedSampler``
    permutation of (seed, e) for this rank, built once when the epoch is first reached and cached
    (one epoch at a time: steps only move forward).
    """

    def __init__(self, n: int, *, rank: int, world: int, seed: int, batch_size: int,
                 grad_accum: int = 1, start: int = 0, stop: int):
        if n < 1:
            raise ValueError("StepBatchSampler: the dataset is empty")
        self.n, self.rank, self.world, self.seed = n, rank, world, seed
        self.batch_size, self.grad_accum = batch_size, grad_accum
        self.start, self.stop = start, stop
        self.per_step = batch_size * grad_accum
        self.rank_len = math.ceil(n / world)  # DistributedSampler(drop_last=False).num_samples
        self.steps_per_epoch = max(1, self.rank_len // self.per_step)
        self._epoch: int | None = None
        self._order: list[int] = []
        self.orders_built = 0  # permutations built so far (one per epoch reached)

    def epoch_order(self, epoch: int) -> list[int]:
        """This rank's indices for ``epoch`` (the DistributedSampler order), cached."""
        if epoch != self._epoch:
            self._order = list(rank_sampler(range(self.n), self.rank, self.world, self.seed, epoch))
            self._epoch = epoch
            self.orders_built += 1
        return self._order

    def indices(self, step: int, micro: int) -> list[int]:
        """Dataset indices of micro-batch ``micro`` of global ``step`` on this rank."""
        epoch, k = divmod(step, self.steps_per_epoch)
        order = self.epoch_order(epoch)
        first = k * self.per_step + micro * self.batch_size
        return [order[(first + i) % len(order)] for i in range(self.batch_size)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.stop):
            for micro in range(self.grad_accum):
                yield [(i, step) for i in self.indices(step, micro)]

    def __len__(self) -> int:
        return max(0, self.stop - self.start) * self.grad_accum

"""torch Datasets over HDF5 shards, and the rank-aware sampler that streams them.

``PairDataset`` (Stage 1) yields real LR/HR pairs; ``DegradedHRDataset`` (Stage 2) yields HR
patches and an LR made on the fly by :class:`~.degradations.Degradation`, seeded by
``(seed, epoch, index)`` so a sample is the same whatever rank or worker draws it.  Values are
normalised to [-1, 1] with the channel ranges stored in the shards; invalid pixels are 0 with a
0 in the mask.  Ranks split the data with ``torch.utils.data.DistributedSampler`` semantics
(deterministic permutation per epoch from the seed, disjoint per rank).
"""
from __future__ import annotations

import bisect
import json

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

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


class PairDataset(_ShardIndex):
    """Stage 1: (lr, lr_mask, hr, hr_mask) from ``pairs-*.h5``."""

    def __getitem__(self, i):
        f, j = self._locate(i)
        lr, lr_mask = _normalise(f["lr"][j], self.lo_lr, self.hi_lr)
        hr, hr_mask = _normalise(f["hr"][j], self.lo, self.hi)
        return {"lr": lr, "lr_mask": lr_mask, "hr": hr, "hr_mask": hr_mask, "index": i}


class DegradedHRDataset(_ShardIndex):
    """Stage 2: HR patches from ``hr-*.h5`` and an LR synthesised on the fly."""
    kind = "hr"

    def __init__(self, directory, degradation: DegradationConfig, epoch: int = 0):
        super().__init__(directory)
        self.degrade = Degradation(degradation, self.scale)
        self.seed = degradation.seed
        self.epoch = epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i):
        f, j = self._locate(i)
        hr, hr_mask = _normalise(f["hr"][j], self.lo, self.hi)
        g = torch.Generator().manual_seed(seed_from(self.seed, self.epoch, i))
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

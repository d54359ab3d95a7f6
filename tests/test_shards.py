import datetime as dt

import h5py
import numpy as np
import pytest
import torch

from cloudsr_hpc.data.datasets import DegradedHRDataset, PairDataset, rank_sampler
from cloudsr_hpc.data.shards import ShardWriter, list_shards
from cloudsr_hpc.errors import InputError
from cloudsr_hpc.schema import DegradationConfig

ATTRS = {"pair": "seviri_viirs", "scale": 4, "lr_channels": ["IR_108"], "hr_channels": ["I05"],
         "norm_hr": [[190.0], [320.0]], "norm_lr": [[190.0], [320.0]]}


def _write(tmp_path, n=10, shard_size=4):
    rng = np.random.default_rng(0)
    w = ShardWriter(tmp_path, "pairs", shard_size, ATTRS)
    wh = ShardWriter(tmp_path, "hr", shard_size, ATTRS)
    for i in range(n):
        hr = rng.uniform(200, 300, (1, 32, 32)).astype(np.float32)
        hr[0, 0, 0] = np.nan
        lr = hr.reshape(1, 8, 4, 8, 4).mean((2, 4))
        w.add(hr, dt.datetime(2024, 6, 1, 12), i, 2 * i, ["a.nc", "b.nc"], lr=lr)
        wh.add(hr, dt.datetime(2024, 6, 1, 12), i, 2 * i, ["a.nc"])
    w.flush(), wh.flush()
    return w


def test_shards_are_chunked_compressed_and_carry_provenance(tmp_path):
    w = _write(tmp_path)
    assert [p.name for p in w.written] == ["pairs-00000.h5", "pairs-00001.h5", "pairs-00002.h5"]
    with h5py.File(w.written[0]) as f:
        assert f["hr"].shape == (4, 1, 32, 32) and f["lr"].shape == (4, 1, 8, 8)
        assert f["hr"].chunks == (1, 1, 32, 32) and f["hr"].compression == "gzip"
        assert f.attrs["pair"] == "seviri_viirs" and "a.nc" in f.attrs["source_files"]
        assert list(f["col"][:]) == [0, 2, 4, 6]
    assert not list(tmp_path.glob(".*"))


def test_pair_dataset_normalises_and_masks(tmp_path):
    _write(tmp_path)
    ds = PairDataset(tmp_path)
    assert len(ds) == 10
    s = ds[5]
    assert s["hr"].shape == (1, 32, 32) and s["lr"].shape == (1, 8, 8)
    assert s["hr_mask"][0, 0, 0] == 0 and s["hr"][0, 0, 0] == 0  # NaN -> 0 with a 0 in the mask
    assert float(s["hr"].min()) >= -1 and float(s["hr"].max()) <= 1
    with pytest.raises(IndexError):
        ds[10]


def test_ranks_see_disjoint_deterministic_slices(tmp_path):
    _write(tmp_path)
    ds = PairDataset(tmp_path)
    r0 = list(rank_sampler(ds, 0, 2, seed=1, epoch=3))
    r1 = list(rank_sampler(ds, 1, 2, seed=1, epoch=3))
    assert sorted(r0 + r1) == list(range(10)) and not set(r0) & set(r1)
    assert r0 == list(rank_sampler(ds, 0, 2, seed=1, epoch=3))
    assert r0 != list(rank_sampler(ds, 0, 2, seed=1, epoch=4))  # reshuffled each epoch


def test_degraded_dataset_is_reproducible_per_index_and_epoch(tmp_path):
    _write(tmp_path)
    ds = DegradedHRDataset(tmp_path, DegradationConfig(noise_std=(0.01, 0.02), seed=5))
    a, b = ds[3], ds[3]
    assert torch.equal(a["lr"], b["lr"]) and a["lr"].shape == (1, 8, 8)
    ds.set_epoch(1)
    assert not torch.equal(a["lr"], ds[3]["lr"])
    assert a["lr_mask"][0, 0, 0] == 0  # the LR pixel over the NaN HR pixel is invalid


def test_empty_or_missing_shard_dir_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="no pairs-\\*.h5 shards"):
        list_shards(tmp_path, "pairs")
    with pytest.raises(InputError, match="does not exist"):
        PairDataset(tmp_path / "nope")
    (tmp_path / "pairs-00000.h5").write_bytes(b"garbage")
    with pytest.raises(InputError, match="pairs-00000.h5: not a readable shard"):
        PairDataset(tmp_path)

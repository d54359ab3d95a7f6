"""Dihedral augmentation of HR-only training samples (``data.augment``): every symmetry of the
square reachable, the stored patch turned and nothing else changed (the degradation draws the same
values), the same sample whatever the worker, validation never augmented, and real LR/HR pairs
refused."""
import json

import pytest
import torch

from cloudsr_hpc.config import build
from cloudsr_hpc.data.datasets import DIHEDRAL, DegradedHRDataset, dihedral
from cloudsr_hpc.errors import ConfigError
from cloudsr_hpc.schema import DegradationConfig, StageConfig
from cloudsr_hpc.training.trainer import make_dataset

DEGRADE = DegradationConfig(noise_std=(0.01, 0.05), seed=3)


def test_dihedral_reaches_the_eight_symmetries_and_keeps_non_square_shapes():
    x = torch.arange(2 * 5 * 5, dtype=torch.float32).reshape(2, 5, 5)
    outs = {tuple(dihedral(x, k, m).flatten().tolist()) for k, m in DIHEDRAL}
    assert len(outs) == 8  # all distinct: a wrong turn or mirror would repeat one
    assert torch.equal(dihedral(x, 1, False), torch.rot90(x, 1, dims=(1, 2)))
    assert torch.equal(dihedral(x, 0, True), x.flip(-1))
    wide = torch.zeros(2, 4, 6)
    assert {dihedral(wide, k, m).shape for k, m in DIHEDRAL} == {wide.shape}


def test_augmented_sample_is_a_turned_stored_patch_with_the_same_degradation_draws(shards):
    plain = DegradedHRDataset(shards / "train", DEGRADE)
    turned = DegradedHRDataset(shards / "train", DEGRADE, augment="dihedral")
    seen = set()
    for step in range(12):
        for i in (0, 5):
            a, b = plain[(i, step)], turned[(i, step)]
            assert json.loads(a["params"]) == json.loads(b["params"])  # the degradation's own stream
            matches = [(k, m) for k, m in DIHEDRAL if torch.equal(dihedral(a["hr"], k, m), b["hr"])]
            assert matches, f"sample {(i, step)} is not a symmetry of the stored patch"
            assert torch.equal(dihedral(a["hr_mask"], *matches[0]), b["hr_mask"])
            seen.add(matches[0])
            assert torch.equal(turned[(i, step)]["lr"], b["lr"])  # a key gives one sample, always
    assert len(seen) >= 4  # drawn per (step, index), not one fixed turn


def _stage(stage: int, pair: str, shards, augment: str) -> StageConfig:
    return build(StageConfig, {"stage": stage, "data": {"pair": pair, "shards": str(shards),
                                                        "augment": augment}}, "stage")


def test_validation_is_never_augmented_and_training_is(shards):
    cfg = _stage(2, "seviri_viirs", shards, "dihedral")
    assert make_dataset(cfg, "train").augment == "dihedral"
    assert make_dataset(cfg, "val").augment == "none"


def test_augmenting_real_pairs_is_refused_naming_the_key(shards):
    with pytest.raises(ConfigError, match="data.augment"):
        make_dataset(_stage(1, "seviri_viirs", shards, "dihedral"), "train")
    with pytest.raises(ConfigError, match="data.augment"):
        build(StageConfig, {"stage": 2, "data": {"augment": "rot45"}}, "stage")

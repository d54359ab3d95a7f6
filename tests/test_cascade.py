"""After a short CPU training on synthetic SEVIRI->VIIRS pairs, the cascade beats bicubic on held-out pairs."""
import json

import pytest

from cloudsr_hpc.data.datasets import PairDataset
from cloudsr_hpc.evaluation.heldout import heldout_scores
from cloudsr_hpc.models.cascade import Cascade, Stage
from tests.conftest import run_train

pytestmark = pytest.mark.slow
SMALL = ["model.base_channels=16", "model.channel_mult=[1,2]", "train.batch_size=8", "train.lr=5e-4",
         "train.steps=80", "train.val_every=80", "train.ckpt_every=80"]


def _psnrs(stages, val, seed=0):
    res = heldout_scores(val, {"model": Cascade(stages, seed)})
    return {k: v["psnr"] for k, v in res.items()}


def test_cascade_and_each_stage_beat_bicubic_on_held_out_pairs(sv_archive, tmp_path):
    root, _ = sv_archive
    shards = root / "pairs"
    s1 = run_train("configs/stage1.yaml", shards, tmp_path / "s1", *SMALL, "init_from=null")
    assert s1.returncode == 0, s1.stderr[-3000:]
    s2 = run_train("configs/stage2.yaml", shards, tmp_path / "s2", *SMALL,
                   f"init_from={tmp_path / 's1' / 'export' / 'model.pt'}")
    assert s2.returncode == 0, s2.stderr[-3000:]
    reg = run_train("configs/stage1.yaml", shards, tmp_path / "reg", *SMALL, "stage=regression", "init_from=null")
    assert reg.returncode == 0, reg.stderr[-3000:]
    val = PairDataset(shards / "val")
    stage1, stage2 = Stage.load(tmp_path / "s1" / "export" / "model.pt"), Stage.load(tmp_path / "s2" / "export" / "model.pt")
    regression = Stage.load(tmp_path / "reg" / "export" / "model.pt")
    res = {"stage1": _psnrs([stage1], val), "cascade": _psnrs([stage1, stage2], val),
           "regression": _psnrs([regression], val)}
    print(json.dumps(res))
    bicubic = res["stage1"]["bicubic"]
    assert res["stage1"]["model"] > bicubic + 0.5
    assert res["cascade"]["model"] > bicubic + 0.5
    assert res["regression"]["model"] > bicubic
    # the sample is a pure function of the seed
    a, b = _psnrs([stage1, stage2], val, seed=3), _psnrs([stage1, stage2], val, seed=3)
    assert a == b

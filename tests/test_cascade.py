"""After the documented short CPU training on synthetic SEVIRI->VIIRS pairs, every learned method
beats bicubic on held-out pairs, and a cascade's sample is a pure function of its seed."""
import pytest

from cloudsr_hpc.config import load
from cloudsr_hpc.data.sensors import load_registry
from cloudsr_hpc.evaluation.protocol import evaluate_pairs, load_methods
from cloudsr_hpc.schema import EvaluateConfig

pytestmark = pytest.mark.slow


def _scores(trained, methods, seed=0):
    cfg = load(EvaluateConfig, "evaluate.yaml", [f"pairs={trained['shards'] / 'val'}", f"seed={seed}",
                                                 "lpips=false", f"methods=[{','.join(methods)}]",
                                                 *(f"{k}_checkpoint={trained[k]}"
                                                   for k in ("stage1", "stage2", "regression"))])
    return evaluate_pairs(cfg, load_methods(cfg)[0], load_registry()).scores


def test_cascade_and_each_stage_beat_bicubic_on_held_out_pairs(trained_models):
    res = _scores(trained_models, ["bicubic", "stage1", "cascade", "regression"])
    psnr = {k: v["overall"]["psnr"] for k, v in res.items()}
    print(psnr)
    assert psnr["stage1"] > psnr["bicubic"] + 0.5
    assert psnr["cascade"] > psnr["bicubic"] + 0.5
    assert psnr["regression"] > psnr["bicubic"]
    # the sample is a pure function of the seed
    a, b = (_scores(trained_models, ["cascade"], seed=3)["cascade"]["overall"] for _ in range(2))
    assert a == b

"""Inference runner pieces that need no GPU to check: the batch size chosen from device memory,
stage timers read later (CUDA events), a batch size of 0 on a CPU."""
import pytest

from cloudsr_hpc.config import load
from cloudsr_hpc.core.timing import StageClock
from cloudsr_hpc.data.sensors import load_registry
from cloudsr_hpc.errors import ConfigError
from cloudsr_hpc.inference.mpi import Ranks
from cloudsr_hpc.inference.pipeline import AUTO_CPU_BATCH, ScenePipeline
from cloudsr_hpc.inference.runner import auto_batch_size
from cloudsr_hpc.schema import InferConfig


def test_batch_size_from_free_device_memory():
    gib = 2 ** 30
    assert auto_batch_size(10 * gib, gib) == 8  # 80 % of 10 GiB in 1 GiB tiles
    assert auto_batch_size(139 * gib, gib) == 64  # capped
    assert auto_batch_size(139 * gib, gib, cap=256) == 111
    assert auto_batch_size(gib // 2, gib) == 1  # never 0: one tile is tried, and fails loudly if it must


def test_device_timers_are_charged_when_the_figures_are_read():
    clock, calls = StageClock(), []
    clock.add_later("model", lambda: calls.append(1) or 0.25)
    with clock("blend"):
        pass
    assert not calls  # nothing waited for at record time (a GPU keeps running)
    figures = clock.rounded()
    assert figures["model"] == 0.25 and "blend" in figures and calls == [1]
    assert clock.rounded()["model"] == 0.25  # read once, kept


def test_batch_size_zero_is_chosen_on_a_cpu_and_negative_refused(models, tmp_path):
    sets = [f"stage1_checkpoint={models['s1']}", f"stage2_checkpoint={models['s2']}", "batch_size=0"]
    cfg = load(InferConfig, "infer.yaml", sets)
    pipe = ScenePipeline(cfg, load_registry(), Ranks(), tmp_path, progress=False)
    assert pipe.runner.batch_size == AUTO_CPU_BATCH
    with pytest.raises(ConfigError, match="batch_size"):
        load(InferConfig, "infer.yaml", ["batch_size=-1"])


def test_isal_writes_zlib_streams_that_every_reader_inflates(tmp_path):
    """The output's chunks deflated by ISA-L (the default when installed) decode to the same values
    through HDF5 as zlib's; an unknown engine is refused naming the key."""
    import zlib

    import numpy as np

    from cloudsr_hpc.inference.writer import DEFLATE, SHUFFLE, deflater, encode_chunk
    block = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    filters = ((SHUFFLE, (4,)), (DEFLATE, (4,)))
    fast, ref = deflater("auto"), deflater("zlib")
    assert fast is not zlib.compress  # isal is a dependency: auto picks it
    a, b = (encode_chunk(block, (64, 64), np.nan, filters, d) for d in (fast, ref))
    assert a != b and zlib.decompress(a) == zlib.decompress(b)  # other bytes, the same data
    with pytest.raises(ConfigError, match="deflate"):
        load(InferConfig, "infer.yaml", ["deflate=lz4"])

"""Tiles shared across rank bands (inference/halo.py) on real MPI ranks: each computed once, every
rank gets them in band order, and a rank that fails never leaves another waiting."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

RANK = r"""
import json, sys
import numpy as np
from cloudsr_hpc.inference.halo import PeerStopped, TileExchange, share_tiles
from cloudsr_hpc.inference.mpi import world
from cloudsr_hpc.inference.pipeline import band_tiles, chunk_row_cost, partition_bands
from cloudsr_hpc.inference.tiling import plan_tiles

fail_rank, fail_after = int(sys.argv[1]), int(sys.argv[2])
r = world()
n, s, chunk = 96, 4, 32
yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
tiles = plan_tiles(np.hypot(yy, xx) < n / 2, 24, 8)
bands = partition_bands(chunk_row_cost(tiles, s, chunk, n * s), chunk, n * s, r.size)
plan = share_tiles(tiles, s, bands)
band = band_tiles(tiles, s, *bands[r.rank])
own = plan.computed_by(r.rank, band)

def value(t):  # what computing tile t gives, whichever rank does it
    return float(t.row0 * 1000 + t.col0)

def computed():
    for i, t in enumerate(own):
        if r.rank == fail_rank and i == fail_after:
            raise OSError("disk full")
        pred = np.full((2, t.rows * s, t.cols * s), value(t), np.float32)
        yield t, pred, np.ones((t.rows * s, t.cols * s), bool)

ex = TileExchange(r, band, plan, planes=2, scale=s)
got, outcome = [], "ok"
try:
    for t, pred, valid in ex.stream(computed()):
        assert pred.shape == (2, t.rows * s, t.cols * s) and valid.all()
        got.append([t.row0, t.col0, float(pred.min()), float(pred.max()), value(t)])
    ex.finish()
except PeerStopped:
    outcome = "peer stopped"
    ex.abort()
except OSError:
    outcome = "failed"
    ex.abort()
r.barrier()  # every rank gets here: nobody waits for a tile that never comes
with open(f"{sys.argv[3]}/rank{r.rank}.json", "w") as f:
    json.dump({"rank": r.rank, "outcome": outcome, "band": [[t.row0, t.col0] for t in band],
               "own": len(own), "got": got, "tiles": len(tiles)}, f)
"""


def run_ranks(tmp_path, n: int, fail_rank: int = -1, fail_after: int = 0) -> list[dict]:
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    mpiexec = str(Path(sys.executable).parent / "mpiexec")
    p = subprocess.run([mpiexec, "-n", str(n), sys.executable, str(script), str(fail_rank), str(fail_after),
                        str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    return [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in range(n)]


def test_shared_tiles_are_computed_once_and_reach_every_band_in_order(tmp_path):
    out = run_ranks(tmp_path, 3)
    assert [d["outcome"] for d in out] == ["ok"] * 3
    assert sum(d["own"] for d in out) == out[0]["tiles"]  # each tile computed by exactly one rank
    for d in out:
        assert [g[:2] for g in d["got"]] == d["band"]  # the band's tiles, in its order
        assert all(g[2] == g[3] == g[4] for g in d["got"])  # received = what its owner computed
    assert sum(len(d["band"]) for d in out) > out[0]["tiles"]  # some tiles were shared


@pytest.mark.parametrize("fail_rank", [0, 2])
def test_a_failing_rank_leaves_no_rank_waiting(tmp_path, fail_rank):
    """The top rank fails after its first tile: the ranks below it are told (PeerStopped) instead of
    waiting for its shared tiles.  Rank 0 fails: it still takes what rank 1 sends it."""
    out = run_ranks(tmp_path, 3, fail_rank, 1)
    assert out[fail_rank]["outcome"] == "failed"
    if fail_rank == 2:
        assert out[1]["outcome"] == "peer stopped"
    else:
        assert out[1]["outcome"] == out[2]["outcome"] == "ok"

"""Fault injection: what is trusted after a fault or a tampered file is checked first (issue 11).

Rows of the issue's table: 1 (flipped training checkpoint), 2 (planted pickle), 3 (truncated /
flipped output), 4 (``complevel=0``), 15 (stage mismatch), 19 (kill before the quicklook),
20 (two runs on one output), 23 (checkpoint rotation).
"""
import datetime as dt
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch
import xarray as xr

from cloudsr_hpc.config import load
from cloudsr_hpc.data.geometry import SEVIRI_FULL_DISK
from cloudsr_hpc.data.sensors import load_registry
from cloudsr_hpc.errors import InputError
from cloudsr_hpc.inference import pipeline as pl
from cloudsr_hpc.inference.mpi import Ranks
from cloudsr_hpc.inference.writer import (
    BandSink,
    OutputSpec,
    claim_output,
    create_output,
    fletcher32,
    merge_part,
    remove_stale,
)
from cloudsr_hpc.schema import InferConfig
from cloudsr_hpc.training import checkpoint as ck
from tests.conftest import lr_scene, make_export, run_train
from tests.test_inference import HR_CH
from tests.test_training import TINY

pytestmark = pytest.mark.fault  # each test injects a fault: counted in the suite's 'faults:' line

SLOT = dt.datetime(2024, 6, 1, 12)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {"s1": make_export(d / "s1", stage=1, steps=1),
            "s2": make_export(d / "s2", stage=2, steps=1, seed=1),
            "reg": make_export(d / "reg", stage="regression", seed=2)}


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    # reaches the limb
    return lr_scene(tmp_path_factory.mktemp("lr") / "lr.nc", rows=48, cols=40, row0=1700, col0=3660)


def pipeline(models, out, *extra, quicklook=False):
    cfg = load(InferConfig, "infer.yaml", [f"regression_checkpoint={models['reg']}", "stages=regression",
                                           "tile_lr=32", "overlap_lr=4", "halo_hr=4", "batch_size=4",
                                           "chunk=32", f"quicklook={quicklook}", *extra])
    return pl.ScenePipeline(cfg, load_registry(), Ranks(), out, progress=False)


@pytest.fixture(scope="module")
def done(models, scene, tmp_path_factory):
    """One finished output (scene slot 12:00) and its pipeline."""
    pipe = pipeline(models, tmp_path_factory.mktemp("done"))
    res = pipe.run([scene], SLOT)
    assert res.record == pl.output_record(res.path)
    return pipe, res.path


def flip(path: Path, offset: int, n: int = 3) -> None:
    data = bytearray(path.read_bytes())
    for i in range(offset, offset + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def chunk_extent(path: Path, var: str) -> tuple[int, int]:
    with h5py.File(path) as f:
        info = f[var].id.get_chunk_info(0)
        return info.byte_offset, info.size


# ------------------------------------------------------------------------- rows 3 and 4: outputs
def test_fletcher32_is_hdf5s(tmp_path):
    """Chunks are checksummed here (compressed in worker threads): the sum must be HDF5's own."""
    rng = np.random.default_rng(0)
    cases = [np.zeros(10, np.uint8), np.full(2, 255, np.uint8), np.tile(np.uint8(255), 2 * 65535 * 3)]
    cases += [rng.integers(0, 256, n).astype(np.uint8) for n in (1, 3, 720, 721, 65537)]
    with h5py.File(tmp_path / "f.h5", "w") as f:
        for i, c in enumerate(cases):
            f.create_dataset(str(i), data=c, chunks=(len(c),), fletcher32=True)
    with h5py.File(tmp_path / "f.h5") as f:
        for i, c in enumerate(cases):
            raw = f[str(i)].id.read_direct_chunk((0,))[1]
            assert int.from_bytes(raw[-4:], "little") == fletcher32(c.tobytes()), len(c)


@pytest.mark.parametrize("complevel,packing", [(0, "float32"), (4, "float32"), (0, "int16")])
def test_bands_and_parts_decode_for_every_complevel(tmp_path, complevel, packing):
    """Row 4: the writer encodes chunks by the filters the file declares (none but the checksum
    at complevel 0), in the output and in a rank's part file merged into it."""
    grid = SEVIRI_FULL_DISK.window(1000, 1000, 20, 18).scaled(4)
    spec = OutputSpec(["a", "b"], {}, grid, chunk=32, packing=packing, complevel=complevel,
                      pack_range={"a": (0.0, 100.0), "b": (0.0, 100.0)})
    rng = np.random.default_rng(1)
    vals = (rng.random((2, *grid.shape)) * 100).astype(np.float32)
    vals[:, :40, :20] = np.nan  # an all-fill chunk is never written
    out, part = tmp_path / "out.nc", tmp_path / "part.h5"
    create_output(out, spec)
    for path, a, b, is_part in ((out, 0, 32, False), (part, 32, 80, True)):
        sink = BandSink(path, spec, a, b, part=is_part)
        for row in range(a, b, 32):
            sink.write(row, vals[:, row:min(row + 32, b)])
        sink.close()
    assert merge_part(out, part, 32, ["a", "b"]) > 0
    with xr.open_dataset(out) as ds:  # netCDF4 decodes every chunk
        got = np.stack([ds["a"].values, ds["b"].values])
    tol = 0 if packing == "float32" else 100 / 65534
    np.testing.assert_allclose(got, vals, atol=tol)
    assert np.array_equal(np.isnan(got), np.isnan(vals))
    with h5py.File(out) as f:
        assert f["a"].fletcher32 and (f["a"].compression == "gzip") == (complevel > 0)


def test_complevel_0_output_is_readable_and_verifies(models, scene, tmp_path):
    res = pipeline(models, tmp_path, "complevel=0").run([scene], SLOT)
    pl.verify_output(res.path, HR_CH, full=True)
    with xr.open_dataset(res.path) as ds:
        assert np.isfinite(ds["I05"].values).any()


def test_flipped_output_fails_full_verification_and_is_redone(models, done, tmp_path):
    """Row 3: three flipped bytes inside a chunk pass the cheap check (metadata, sizes) but not
    ``--verify`` (every chunk against its Fletcher32); ``infer`` does not count the scene done."""
    from cloudsr_hpc.infer import _existing
    _, good = done
    pl.verify_output(good, HR_CH, full=True)
    bad = tmp_path / good.name
    shutil.copy(good, bad)
    off, size = chunk_extent(bad, "I05")
    flip(bad, off + size // 2)
    pl.verify_output(bad, HR_CH)  # cheap: nothing decoded
    with pytest.raises(InputError, match="I05 chunk at .* is corrupt") as e:
        pl.verify_output(bad, HR_CH, full=True)
    assert "\n" not in str(e.value)
    pipe, sc = pipeline(models, tmp_path), SimpleNamespace(time=SLOT, files=[])
    assert _existing(pipe, sc, Ranks(), full=True) is None  # infer --verify recomputes it
    assert _existing(pipe, sc, Ranks(), full=False) == bad


def test_truncated_output_fails_the_cheap_check(done, tmp_path):
    _, good = done
    bad = tmp_path / good.name
    data = good.read_bytes()
    off, size = chunk_extent(good, "I05")
    bad.write_bytes(data[:off + size // 2])
    with pytest.raises(InputError) as e:
        pl.verify_output(bad, HR_CH)
    assert "\n" not in str(e.value) and str(bad) in str(e.value)


def _btree_entry(path: Path, var: str) -> tuple[int, int]:
    """(file position of the filter mask, of the first coordinate) of ``var``'s first chunk in its
    v1 B-tree leaf: size u32, filter mask u32, ndims + 1 u64 offsets, then the chunk address."""
    import struct
    with h5py.File(path) as f:
        info = f[var].id.get_chunk_info(0)
    data = path.read_bytes()
    key = struct.pack("<II", info.size, 0) + b"".join(struct.pack("<Q", o) for o in (*info.chunk_offset, 0))
    pos = data.find(key + struct.pack("<Q", info.byte_offset))
    assert pos > 0 and data.count(key + struct.pack("<Q", info.byte_offset)) == 1
    return pos + 4, pos + 8


def test_damaged_chunk_index_fails_verification(done, tmp_path):
    """A chunk marked to skip its filters reads as raw compressed bytes, unchecked, in h5py; a
    damaged search key makes a stored chunk read as fill: neither passes."""
    _, good = done
    mask_at, coord_at = _btree_entry(good, "I05")
    for at, full, why in ((mask_at, False, "skip filters"),
                          (coord_at, True, "is corrupt|not a readable HDF5 file")):
        bad = tmp_path / f"{at}.nc"
        shutil.copy(good, bad)
        flip(bad, at, 1)
        with pytest.raises(InputError, match=why):
            pl.verify_output(bad, HR_CH, full=full)


def test_recorded_size_and_digest_are_checked_before_parsing(done, tmp_path):
    """With the record ``infer`` prints (size, sha256), a byte flipped anywhere -- also in HDF5
    metadata, which can make the library loop -- fails before the file is opened."""
    _, good = done
    record = pl.output_record(good)
    pl.verify_output(good, HR_CH, full=True, record=record)
    bad = tmp_path / good.name
    for at in (100, len(good.read_bytes()) // 2, len(good.read_bytes()) - 10):
        shutil.copy(good, bad)
        flip(bad, at, 1)
        with pytest.raises(InputError, match="sha256 differs from the one recorded"):
            pl.verify_output(bad, HR_CH, full=True, record=record)
    bad.write_bytes(good.read_bytes()[:-1])
    with pytest.raises(InputError, match="truncated or replaced"):
        pl.verify_output(bad, HR_CH, record=record)


def test_campaign_reconcile_requeues_a_corrupt_done_scene(done, tmp_path):
    """A scene the ledger has as done goes back to pending, with the reason, once its output fails:
    a flipped chunk under full verification, and -- cheaply, from the size recorded in the ledger
    when the output was written, before the file is parsed -- bytes appended to it."""
    from cloudsr_hpc.orchestration import campaign
    from cloudsr_hpc.orchestration.ledger import Ledger
    _, good = done
    bad = tmp_path / good.name
    shutil.copy(good, bad)
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.add_scenes([("s1", ["in.nc"], str(bad))])
    ledger.claim("w", 3)
    ledger.finish("s1", "w", 1.0, pl.output_record(bad))
    assert ledger.scenes()[0].record == pl.output_record(good)
    assert campaign.reconcile(tmp_path, ledger, full=True)["requeued"] == []
    off, size = chunk_extent(bad, "I01")
    flip(bad, off + size // 3)
    assert campaign.reconcile(tmp_path, ledger)["requeued"] == []  # cheap: same size, chunk index intact
    assert campaign.reconcile(tmp_path, ledger, full=True)["requeued"] == ["s1"]
    (sc,) = ledger.scenes()
    assert sc.state == "pending" and "differs from the one recorded" in sc.error
    shutil.copy(good, bad)  # found on disk again: done, with a fresh record
    assert campaign.reconcile(tmp_path, ledger)["done"] == ["s1"]
    with open(bad, "ab") as f:
        f.write(b"\0" * 7)  # still a readable HDF5 file: only the recorded size tells
    assert campaign.reconcile(tmp_path, ledger)["requeued"] == ["s1"]
    assert "truncated or replaced" in ledger.scenes()[0].error
    ledger.close()


# ------------------------------------------------------------------------- row 15: stage mismatch
def test_stage2_export_given_as_stage1_is_refused(models):
    cfg = load(InferConfig, "infer.yaml",
               [f"stage1_checkpoint={models['s2']}", f"stage2_checkpoint={models['s2']}"])
    with pytest.raises(InputError, match="export of Stage 2, given as infer.stage1_checkpoint "
                                         r"\(which takes Stage 1\)"):
        pl.load_cascade(cfg)
    cfg = load(InferConfig, "infer.yaml",
               [f"stage1_checkpoint={models['s1']}", f"stage2_checkpoint={models['s1']}"])
    with pytest.raises(InputError, match="export of Stage 1, given as infer.stage2_checkpoint"):
        pl.load_cascade(cfg)
    cfg = load(InferConfig, "infer.yaml", ["stages=regression", f"regression_checkpoint={models['s1']}"])
    with pytest.raises(InputError, match="which takes the regression baseline"):
        pl.load_cascade(cfg)
    cfg = load(InferConfig, "infer.yaml",
               [f"stage1_checkpoint={models['s1']}", f"stage2_checkpoint={models['s2']}"])
    assert [st.meta["stage"] for st in pl.load_cascade(cfg).stages] == [1, 2]


# ------------------------------------------------------------------------- row 19: quicklook
def test_quicklook_exists_before_the_output_and_a_missing_one_is_redrawn(models, scene, tmp_path,
                                                                         monkeypatch):
    """The PNG is drawn from the temporary file before the rename (a kill between the two leaves
    no output without its picture); an output that lacks one anyway is given one by the next run."""
    from cloudsr_hpc.infer import _existing
    pipe = pipeline(models, tmp_path, quicklook=True)
    final = pipe.output_path(SLOT)
    seen = []
    real = pl.publish
    monkeypatch.setattr(pl, "publish", lambda tmp, dst: (seen.append(dst.with_suffix(".png").exists()),
                                                         real(tmp, dst)))
    pipe.run([scene], SLOT)
    assert seen == [True]
    final.with_suffix(".png").unlink()  # as a run of an older version killed after the rename leaves it
    assert _existing(pipe, SimpleNamespace(time=SLOT, files=[scene]), Ranks()) == final
    assert final.with_suffix(".png").stat().st_size > 1000


# ------------------------------------------------------------------------- row 20: two runs, one output
def test_cleanup_removes_only_dead_runs_temporaries(tmp_path):
    final = tmp_path / "out.nc"
    live = claim_output(final)
    live.tmp.write_bytes(b"x")
    live.part(1).write_bytes(b"x")
    dead = [tmp_path / ".out.nc.123-dead.part", tmp_path / ".out.nc.123-dead.rank1.part",
            tmp_path / ".out.nc.123-dead.lock", tmp_path / ".out.nc.rank2.part",  # an older version's name
            tmp_path / ".out.nc.abcd1234.part"]
    for p in dead:
        p.write_bytes(b"")
    other = claim_output(final)  # a second run's clean-up
    assert sorted(remove_stale(final)) == [] and all(not p.exists() for p in dead)
    assert live.tmp.exists() and live.part(1).exists() and live.lock.exists() and other.lock.exists()
    live.discard(0, 2)
    other.discard(0)
    assert list(tmp_path.iterdir()) == []


def test_second_run_on_the_same_output_leaves_the_first_ones_files(models, scene, tmp_path, monkeypatch):
    """Row 20: a run starting while another writes the same output (same scene, same --out) does
    not delete the other's temporaries; both finish, the later rename wins, nothing is left."""
    first, second = pipeline(models, tmp_path), pipeline(models, tmp_path)
    real = pl.ScenePipeline._compute_band
    runs = []

    def compute(self, *a, **k):
        if self is first and not runs:
            runs.append(second.run([scene], SLOT))  # the whole second run inside the first's compute
        return real(self, *a, **k)

    monkeypatch.setattr(pl.ScenePipeline, "_compute_band", compute)
    res = first.run([scene], SLOT)
    assert runs and res.path == runs[0].path
    pl.verify_output(res.path, HR_CH, full=True)
    assert [p.name for p in tmp_path.iterdir()] == [res.path.name]


# ------------------------------------------------------------------------- rows 1, 2, 23: training
# checkpoints
class Payload:
    """Unpickling it creates a marker file: what an attacker would plant."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def fake_checkpoint(ckpt_dir: Path, step: int) -> Path:
    d = ckpt_dir / f"step{step:08d}"
    d.mkdir(parents=True)
    torch.save({"module": {"w": torch.full((4,), float(step))}, "step": step},
               d / "mp_rank_00_model_states.pt")
    ck.write_manifest(d)
    ck.write_pointer(ckpt_dir, d.name)
    return d


def test_checkpoint_digests_pick_the_newest_good_one(tmp_path, caplog):
    """Row 1: a flipped byte, a truncated or an added file, a missing manifest: skipped with a
    warning for the previous checkpoint that verifies; none left is an error, not a fresh start."""
    ckpt = tmp_path / "ckpt"
    assert ck.pick_checkpoint(ckpt) is None
    dirs = [fake_checkpoint(ckpt, s) for s in (2, 4, 6, 8)]
    (dirs[3] / ck.MANIFEST).unlink()  # step 8: a save that did not finish
    f6 = dirs[2] / "mp_rank_00_model_states.pt"
    flip(f6, f6.stat().st_size // 2, 1)
    (dirs[1] / "extra.pt").write_bytes(b"x")
    tag, digests = ck.pick_checkpoint(ckpt)
    assert tag == "step00000002"
    assert list(digests) == [str((dirs[0] / "mp_rank_00_model_states.pt").resolve())]
    assert "sha256 does not match" in caplog.text and "extra.pt is not in the digest manifest" in caplog.text
    (dirs[0] / "mp_rank_00_model_states.pt").write_bytes(b"short")
    with pytest.raises(InputError, match="no checkpoint verifies"):
        ck.pick_checkpoint(ckpt)


def test_rotation_keeps_the_last_k_verified(tmp_path):
    """Row 23: older verified checkpoints and unfinished saves go once a newer one verified."""
    ckpt = tmp_path / "ckpt"
    for s in (2, 4, 6, 8, 10):
        fake_checkpoint(ckpt, s)
    (ckpt / "step00000005").mkdir()  # a killed save
    (ckpt / "step00000012").mkdir()  # a later step being written (not ours to judge)
    ck.rotate_checkpoints(ckpt, 3, "step00000010")
    assert sorted(p.name for p in ckpt.glob("step*")) == ["step00000006", "step00000008", "step00000010",
                                                          "step00000012"]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_planted_pickle_never_runs(tmp_path):
    """Row 2: a file replaced after the manifest is refused before it is parsed; one that comes with
    a forged manifest meets the weights-only loader, which refuses it without running it."""
    ckpt = tmp_path / "ckpt"
    d = fake_checkpoint(ckpt, 2)
    marker = tmp_path / "pwned"
    f = d / "mp_rank_00_model_states.pt"
    with open(f, "wb") as fh:
        pickle.dump(Payload(marker), fh)
    with pytest.raises(InputError, match="no checkpoint verifies"):
        ck.pick_checkpoint(ckpt)
    ck.write_manifest(d)  # the attacker also rewrote the manifest
    _, digests = ck.pick_checkpoint(ckpt)
    engine = SimpleNamespace(checkpoint_engine=SimpleNamespace())
    ck.guard_engine_loads(engine, digests)
    with pytest.raises(InputError, match="refused by the weights-only loader"):
        engine.checkpoint_engine.load(str(f))
    with pytest.raises(InputError, match="not among the verified checkpoint files"):
        engine.checkpoint_engine.load(str(tmp_path / "other.pt"))
    assert not marker.exists()


@pytest.mark.slow
def test_training_resume_skips_tampered_checkpoints(shards, tmp_path):
    """Rows 1, 2, 23 in a real run: 8 steps, a checkpoint every 2, the last 3 kept; then the newest
    gets a planted pickle and the one before a flipped byte: the run resumes from the third, with
    a warning for each, and the payload never runs."""
    run, opts = tmp_path / "run", [*TINY, "train.ckpt_every=2", "train.keep_checkpoints=3"]
    p = run_train("configs/stage1.yaml", shards, run, *opts)
    assert p.returncode == 0, p.stderr[-3000:]
    ckpt = run / "ckpt"
    assert sorted(d.name for d in ckpt.glob("step*")) == ["step00000004", "step00000006", "step00000008"]
    marker = tmp_path / "pwned"
    with open(ckpt / "step00000008" / "mp_rank_00_model_states.pt", "wb") as fh:
        pickle.dump(Payload(marker), fh)
    f6 = ckpt / "step00000006" / "mp_rank_00_model_states.pt"
    flip(f6, f6.stat().st_size - 100, 1)
    again = run_train("configs/stage1.yaml", shards, run, *opts, "train.steps=10")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "skipping checkpoint step00000008" in again.stderr
    assert "skipping checkpoint step00000006" in again.stderr
    assert "resumed from step00000004 at step 4" in again.stderr
    assert not marker.exists()
    # saved again from step 4 on: the bad ones were replaced, then the oldest rotated out
    assert sorted(d.name for d in ckpt.glob("step*")) == ["step00000006", "step00000008", "step00000010"]
    for d in ckpt.glob("step*"):
        ck.verify_checkpoint(d)

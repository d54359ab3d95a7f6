"""Full-disk inference: tiling exactness, rank-count invariance, seams, the CF output, failures."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from cloudsr_hpc.config import load
from cloudsr_hpc.core.norm import normalise
from cloudsr_hpc.data.sensors import load_registry
from cloudsr_hpc.evaluation.metrics import seam_ratio, tile_edge_cols
from cloudsr_hpc.inference.halo import share_tiles
from cloudsr_hpc.inference.mpi import Ranks
from cloudsr_hpc.inference.pipeline import (
    ScenePipeline,
    band_tiles,
    chunk_row_cost,
    load_cascade,
    partition_bands,
)
from cloudsr_hpc.inference.tiling import Accumulator, plan_tiles
from cloudsr_hpc.schema import InferConfig
from tests.conftest import LR_CH, PAIR_NORM, ROOT, lr_scene, make_export

HR_CH = ["I01", "I02", "I03", "I04", "I05"]
NAME = "cloudsr_seviri_viirs_{}_20240601T120000.nc"


def model_sets(models):
    return [f"stage1_checkpoint={models['s1']}", f"stage2_checkpoint={models['s2']}",
            f"regression_checkpoint={models['reg']}", "quicklook=false"]


def run_infer(*args, n=1, threads=None, timeout=600, wait=True):
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    mpi = [str(Path(sys.executable).parent / "mpiexec"), "-n", str(n)] if n > 1 else []
    cmd = mpi + [sys.executable, "-m", "cloudsr_hpc.infer", "--quiet", *map(str, args)]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def sets(*kv):
    return [a for s in kv for a in ("--set", s)]


def channels(path):
    with xr.open_dataset(path) as ds:
        return np.stack([ds[c].values for c in HR_CH])


# ------------------------------------------------------------------------------------- units
def test_bands_start_on_chunk_rows_cover_everything_and_balance_work():
    weights = np.array([0, 0, 5, 10, 10, 10, 10, 5, 0, 0], float)  # space at the top and bottom of the disk
    bands = partition_bands(weights, 64, 600, 3)
    assert bands[0][0] == 0 and bands[-1][1] == 600
    assert all(a % 64 == 0 and a <= b for a, b in bands)
    assert all(bands[i][1] == bands[i + 1][0] for i in range(2))
    work = [weights[a // 64:-(-b // 64)].sum() for a, b in bands]
    assert max(work) <= 25 and min(work) >= 15
    # more ranks than chunk rows
    assert [b - a for a, b in partition_bands(np.ones(2), 64, 100, 4)].count(0) == 2


def test_bands_balance_tiles_not_valid_pixels_on_a_disk():
    """On a disk the polar tiles hold a sliver of Earth but cost a full batch slot: weighted by
    the tiles each band computes (a boundary tile by one rank only), 3 ranks compute nearly equal
    numbers of tiles, every tile exactly once; weighted by valid pixels they would not."""
    n, tile, ov, s, chunk = 384, 32, 8, 4, 64
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    valid = np.hypot(yy, xx) < n / 2
    tiles = plan_tiles(valid, tile, ov)

    def computed(weights):
        bands = partition_bands(weights, chunk, n * s, 3)
        plan = share_tiles(tiles, s, bands)
        return [len(plan.computed_by(k, band_tiles(tiles, s, *band))) for k, band in enumerate(bands)]

    per_rank = computed(chunk_row_cost(tiles, s, chunk, n * s))
    by_pixels = computed(np.add.reduceat(valid.sum(1), np.arange(0, n, chunk // s)))
    assert sum(per_rank) == len(tiles) == sum(by_pixels)  # a shared tile is computed once
    assert max(per_rank) < max(by_pixels)
    assert max(per_rank) <= 1.1 * len(tiles) / 3, per_rank  # the busiest rank near the ideal third
    assert chunk_row_cost(tiles, s, chunk, n * s).sum() == len(tiles)


def test_rolling_window_accumulates_like_the_whole_grid():
    rng = np.random.default_rng(1)
    whole, rolling = Accumulator(2, 40, 8), Accumulator(2, 16, 8, row0=0)
    out, done = [], 0
    for r0 in range(0, 33, 4):  # tiles in row order, 8 rows tall
        pred, wgt = rng.random((2, 8, 8)).astype(np.float32), rng.random((8, 8)).astype(np.float32) + 0.1
        while done + 4 <= r0:
            out.append(rolling.pop(4))
            done += 4
        for acc in (whole, rolling):
            acc.add(pred, np.ones((8, 8), bool), wgt, r0, 0)
    out.append(rolling.pop(40 - done))
    np.testing.assert_array_equal(np.concatenate(out, axis=1), whole.result())


def test_tiled_pipeline_equals_the_whole_scene_model(models, scene, tmp_path):
    """Deterministic model, overlap >= 2 receptive margins: tiles reproduce one whole-scene pass."""
    cfg = load(InferConfig, "infer.yaml", model_sets(models) + ["stages=regression", "tile_lr=40",
                                                                "overlap_lr=18", "chunk=64"])
    pipe = ScenePipeline(cfg, load_registry(), Ranks(), tmp_path, progress=False)
    assert pipe.blend.exact and pipe.blend.halo > 0
    res = pipe.run([scene])
    assert res.tiles > 4
    with xr.open_dataset(scene) as ds:
        lr = np.stack([ds[c].values for c in LR_CH])
        r0, c0 = int(ds.attrs["grid_row0"]) * 4, int(ds.attrs["grid_col0"]) * 4
    x, _ = normalise(lr, *PAIR_NORM["lr"])
    chan_valid = np.isfinite(x)  # NaN carries each channel's validity
    casc = load_cascade(cfg)
    with torch.no_grad():
        ref, m = casc(torch.from_numpy(np.nan_to_num(x))[None],
                      torch.from_numpy(chan_valid[None].astype(np.float32)), [(r0, c0)])
    lo, hi = np.array(PAIR_NORM["hr"][0])[:, None, None], np.array(PAIR_NORM["hr"][1])[:, None, None]
    out = (channels(res.path) - lo) / (hi - lo) * 2 - 1
    ref = np.where(m[0].numpy() > 0, ref[0].numpy(), np.nan)
    assert np.array_equal(np.isnan(out), np.isnan(ref))  # invalid exactly where the LR is
    assert np.nanmax(np.abs(out - ref)) < 1e-5


@pytest.mark.slow
def test_same_output_whatever_the_rank_count_and_tile_size(models, scene, tmp_path):
    """Stochastic cascade, fixed seed: 1 and 2 MPI ranks agree bitwise (same tiles, batch shape and
    thread count); a deterministic model with another tile size agrees to 1e-5."""
    common = sets(*model_sets(models), "tile_lr=32", "overlap_lr=8", "chunk=64")
    outs = {}
    for n in (1, 2):
        p = run_infer("--input", scene, "--out", tmp_path / f"n{n}", *common, n=n, threads=1)
        assert p.returncode == 0, p.stderr[-2000:]
        outs[n] = channels(tmp_path / f"n{n}" / NAME.format("cascade"))
        summary = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1])
    assert np.isfinite(outs[1]).any()
    np.testing.assert_array_equal(outs[1], outs[2])
    # the per-rank breakdown of the 2-rank run: every rank ran the model, blended and wrote its
    # band; only rank 0 read the scene and merged the other's part
    stages = summary["stages_s_per_rank"]
    assert len(stages) == 2
    for st in stages:
        assert all(k in st for k in ("cut", "model", "blend", "compress", "write")) and st["model"] > 0, st
        assert st["model"] + st["blend"] < summary["seconds"]["total"]
    assert "read" in stages[0] and "merge" in stages[0] and "read" not in stages[1]
    # the tiles straddling the band boundary were computed once, by one rank, and received by the other
    assert sum(summary["tiles_per_rank"]) == summary["tiles"]
    assert "wait_tiles" in stages[0] and "wait_tiles" not in stages[1]
    reg = sets(*model_sets(models), "stages=regression", "overlap_lr=18", "chunk=64")
    for tile in (40, 56):
        p = run_infer("--input", scene, "--out", tmp_path / f"t{tile}", *reg, "--set", f"tile_lr={tile}", n=2)
        assert p.returncode == 0, p.stderr[-2000:]
    a, b = (channels(tmp_path / f"t{t}" / NAME.format("regression")) for t in (40, 56))
    scale = (np.array(PAIR_NORM["hr"][1]) - np.array(PAIR_NORM["hr"][0]))[:, None, None] / 2
    assert np.nanmax(np.abs(a - b) / scale) < 1e-5


def test_no_seams_at_tile_boundaries_unlike_naive_tiling(models, tmp_path):
    lr = lr_scene(tmp_path / "smooth.nc", rows=64, cols=120, row0=1800, col0=1800, smooth=4.0)
    scores = {}
    for name, overlap in (("blended", 12), ("naive", 0)):
        cfg = load(InferConfig, "infer.yaml",
                   model_sets(models) + ["tile_lr=32", f"overlap_lr={overlap}", "chunk=64"])
        pipe = ScenePipeline(cfg, load_registry(), Ranks(), tmp_path / name, progress=False)
        res = pipe.run([lr])
        scores[name] = seam_ratio(channels(res.path)[-1], tile_edge_cols(120, 32, overlap, 4))
    print("seam scores", scores)
    assert scores["blended"] < 1.15
    assert scores["naive"] > scores["blended"] + 0.1


# ------------------------------------------------------------------------------------- the file
def test_output_is_cf_compliant_and_opens_with_both_engines(models, scene, tmp_path):
    p = run_infer("--input", scene, "--out", tmp_path / "f", *sets(*model_sets(models), "tile_lr=32",
                                                                   "overlap_lr=8",
                                                                   "chunk=64", "quicklook=true"))
    assert p.returncode == 0, p.stderr[-2000:]
    q = run_infer("--input", scene, "--out", tmp_path / "q", *sets(*model_sets(models), "tile_lr=32",
                                                                   "overlap_lr=8",
                                                                   "chunk=64", "packing=int16"))
    assert q.returncode == 0, q.stderr[-2000:]
    path, packed = tmp_path / "f" / NAME.format("cascade"), tmp_path / "q" / NAME.format("cascade")
    assert path.with_suffix(".png").stat().st_size > 10000  # the quicklook
    a = {e: xr.open_dataset(path, engine=e) for e in ("netcdf4", "h5netcdf")}
    for c in HR_CH:
        np.testing.assert_array_equal(a["netcdf4"][c].values, a["h5netcdf"][c].values)
    ds = a["netcdf4"]
    with xr.open_dataset(scene) as lr:
        assert ds.sizes == {"y": lr.sizes["y"] * 4, "x": lr.sizes["x"] * 4}
        np.testing.assert_allclose(ds.x.values[::4][:3] + 1.5 * (ds.x.values[1] - ds.x.values[0]),
                                   lr.x.values[:3])
    assert ds["I05"].attrs["units"] == "K" and ds["I05"].attrs["grid_mapping"] == "geostationary"
    assert ds["geostationary"].attrs["grid_mapping_name"] == "geostationary"
    assert ds["I05"].encoding["zlib"] and ds["I05"].encoding["chunksizes"] == (64, 64)
    import hashlib
    assert ds.attrs["source_sha256"] == hashlib.sha256(Path(scene).read_bytes()).hexdigest()
    manifests = [(Path(models[k]).parent / "manifest.json").read_text() for k in ("s1", "s2")]
    assert all(h in m for h, m in zip(ds.attrs["model_sha256"].split(";"), manifests, strict=True))
    with xr.open_dataset(packed) as pk:  # int16 packing: within half a quantisation step
        assert pk["I05"].encoding["dtype"] == np.int16
        step, mid = pk["I05"].encoding["scale_factor"], pk["I05"].encoding["add_offset"]
        lo, hi = mid - 32767 * step, mid + 32767 * step  # the packed range; beyond it values saturate
        f, q = ds["I05"].values, pk["I05"].values
        inside = (f > lo) & (f < hi)
        assert inside.sum() > 0.5 * np.isfinite(f).sum()
        assert np.nanmax(np.abs(q - f)[inside]) <= step / 2 + 1e-3
        np.testing.assert_allclose(q[np.isfinite(f) & ~inside], np.clip(f, lo, hi)[np.isfinite(f) & ~inside],
                                   atol=step)
        assert np.array_equal(np.isnan(pk["I05"].values), np.isnan(ds["I05"].values))
    for d in a.values():
        d.close()
    from compliance_checker.suite import CheckSuite
    cs = CheckSuite()
    cs.load_all_available_checkers()
    for f in (path, packed):
        cds = cs.load_dataset(str(f))
        results, errors = cs.run_all(cds, ["cf:1.10"], [], [])["cf:1.10"]
        rep = cs.build_structure("cf:1.10", results, str(f), 2)  # high and medium priority
        issues = [f"{r.name}: {m}" for k in ("high_priorities", "medium_priorities")
                  for r in rep[k] for m in r.msgs]
        assert not errors and not issues, issues


def _kill_when_writing(proc, out: Path, timeout=120) -> bool:
    t0 = time.time()
    while time.time() - t0 < timeout and proc.poll() is None:
        if any(p.name.endswith(".part") for p in out.glob(".*")):
            time.sleep(0.3)  # well inside the write: chunks are being compressed and stored
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.01)
    return False


@pytest.mark.slow
def test_kill_9_mid_write_leaves_no_file_and_a_rerun_is_correct(models, tmp_path):
    lr = lr_scene(tmp_path / "big.nc", rows=160, cols=160, row0=1700, col0=1700)
    common = sets(*model_sets(models), "tile_lr=32", "overlap_lr=8", "chunk=64")
    ref = run_infer("--input", lr, "--out", tmp_path / "ref", *common, threads=1)
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = tmp_path / "out"
    proc = run_infer("--input", lr, "--out", out, *common, threads=1, wait=False)
    assert _kill_when_writing(proc, out), "the run never reached the write phase"
    assert not (out / NAME.format("cascade")).exists()
    assert any(p.name.endswith(".part") for p in out.glob(".*"))  # what the killed run left, under temp names
    again = run_infer("--input", lr, "--out", out, *common, threads=1)
    assert again.returncode == 0, again.stderr[-2000:]
    assert [p.name for p in out.iterdir()] == [NAME.format("cascade")]  # stale temporaries removed
    np.testing.assert_array_equal(channels(out / NAME.format("cascade")),
                                  channels(tmp_path / "ref" / NAME.format("cascade")))


def _small_disk(path: Path) -> tuple[bool, object]:
    """A 256 KiB tmpfs at ``path`` (root); else a 256 KiB file-size limit for the child."""
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(path)], capture_output=True)
    if r.returncode == 0:
        return True, None

    def limit():
        import resource
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))
    return False, limit


@pytest.mark.parametrize("ranks", [1, 2])
def test_disk_full_gives_one_error_line_and_no_file(models, tmp_path, ranks):
    """With 2 ranks a rank fails while the other still sends it the tiles they share (or waits for
    its own): both stop, one error line, nothing left behind -- no rank waits forever."""
    lr = lr_scene(tmp_path / "lr.nc", rows=160, cols=160, row0=1700, col0=1700)
    full = tmp_path / "full"
    mounted, preexec = _small_disk(full)
    try:
        mpi = [str(Path(sys.executable).parent / "mpiexec"), "-n", "2"] if ranks == 2 else []
        cmd = [*mpi, sys.executable, "-m", "cloudsr_hpc.infer", "--quiet", "--input", str(lr),
               "--out", str(full),
               *sets(*model_sets(models), "tile_lr=32", "overlap_lr=8", "chunk=64", "complevel=0")]
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, preexec_fn=preexec)
        assert p.returncode == 2, p.stderr[-2000:]
        errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and str(full) in errors[0], p.stderr[-2000:]
        assert list(full.iterdir()) == []  # neither the product nor a temporary
    finally:
        if mounted:
            subprocess.run(["umount", str(full)])


def test_read_only_file_system_gives_one_error_line_and_no_file(models, scene, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)],
                             capture_output=True).returncode == 0
    if not mounted:
        ro.chmod(0o555)  # not root: a directory we may not write to
    try:
        p = run_infer("--input", scene, "--out", ro, *sets(*model_sets(models), "tile_lr=32", "overlap_lr=8",
                                                         "chunk=64"))
        assert p.returncode == 2, p.stderr[-2000:]
        errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and str(ro) in errors[0] and "Traceback" not in p.stderr, p.stderr[-2000:]
        assert list(ro.iterdir()) == []
    finally:
        if mounted:
            subprocess.run(["umount", str(ro)])
        else:
            ro.chmod(0o755)


@pytest.mark.parametrize("case", ["missing", "truncated", "channels", "checkpoint"])
def test_bad_input_is_one_clear_error_and_no_output(models, scene, tmp_path, case):
    args = ["--input", scene]
    extra = []
    if case == "missing":
        args = ["--input", tmp_path / "nope.nc"]
        want = "nope.nc"
    elif case == "truncated":
        bad = tmp_path / "trunc.nc"
        bad.write_bytes(Path(scene).read_bytes()[:3000])
        args, want = ["--input", bad], "trunc.nc"
    elif case == "channels":
        four = make_export(tmp_path / "four", stage="regression", channels=4)
        extra, want = ["stages=regression", f"regression_checkpoint={four}"], "channels"
    else:
        extra, want = [f"stage1_checkpoint={tmp_path / 'none' / 'model.pt'}"], "checkpoint not found"
    p = run_infer(*args, "--out", tmp_path / "o", *sets(*model_sets(models), *extra))
    assert p.returncode == 2
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and want in errors[0], p.stderr[-1500:]
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []


# ------------------------------------------------------------------------------------- real files
@pytest.mark.slow
def test_infer_from_the_archive_by_date_on_real_format_files(models, sv_archive, tmp_path):
    root, _ = sv_archive
    common = sets(*model_sets(models), "tile_lr=64", "overlap_lr=8", "chunk=128")
    p = run_infer("--date", "2024-06-01T12:02", "--archive", root / "archive", "--out", tmp_path / "d",
                  *common)
    assert p.returncode == 0, p.stderr[-2000:]
    out = tmp_path / "d" / NAME.format("cascade")
    with xr.open_dataset(out) as ds:
        src = ds.attrs["source_files"]
        assert src.startswith("W_XX-EUMETSAT-Darmstadt") and "20240601120" in src
        lr_invalid = None
        from cloudsr_hpc.data.readers import read_files
        reg = load_registry()
        f = next((root / "archive").rglob(src))
        lr = read_files([f], reg.sensor("seviri"), "nc", LR_CH)
        lr_invalid = ~np.isfinite(np.stack([lr[c].values for c in LR_CH])).all(0)
        hr_invalid = np.isnan(ds["I05"].values)
        np.testing.assert_array_equal(hr_invalid, np.kron(lr_invalid, np.ones((4, 4), bool)))
    # a rerun keeps the verified output; two ranks taking whole scenes do two dates
    again = run_infer("--date", "2024-06-01T12:02", "--archive", root / "archive", "--out", tmp_path / "d",
                      *common)
    assert again.returncode == 0 and "exists and verifies" in again.stderr
    two = run_infer("--date", "2024-06-01T11:45", "--end", "2024-06-01T12:00", "--archive", root / "archive",
                    "--out", tmp_path / "s", "--shard", "scenes", *common, n=2)
    assert two.returncode == 0, two.stderr[-2000:]
    assert len(list((tmp_path / "s").glob("*.nc"))) == 2

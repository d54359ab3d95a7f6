"""Hostile and broken input (issue 11, rows 5, 6, 11, 12, 13, 16, 17, 18): refused with one line and
exit 2, nothing created, nothing run; a lost ledger rebuilt from the truth on disk."""
import datetime as dt
import json
import shlex
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import netCDF4
import numpy as np
import pytest

from cloudsr_hpc.config import load
from cloudsr_hpc.errors import ConfigError, InputError
from cloudsr_hpc.schema import EvaluateConfig, InferConfig, PairsFile, StageConfig
from tests.conftest import ROOT, make_export, run_cli

pytestmark = pytest.mark.fault  # each test injects a fault: counted in the suite's 'faults:' line

SLOTS = [dt.datetime(2024, 6, 1, 11, 0), dt.datetime(2024, 6, 1, 11, 15)]
CHANNELS = ("VIS006", "VIS008", "IR_016", "IR_039", "IR_108")


def one_error(p, *needles):
    """Exit 2 and exactly one ``error:`` line holding every needle, no traceback."""
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert p.returncode == 2 and len(lines) == 1, (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture
def cli_here(capsys):
    """``submit`` in this process (no interpreter start per call) for the many-case loops; one
    subprocess run per test checks the real command line.  A traceback here fails the test."""
    from cloudsr_hpc.submit import main

    def run(*args):
        capsys.readouterr()
        rc = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return SimpleNamespace(returncode=rc, stdout=out, stderr=err)
    return run


def seviri_files(out: Path, slots=SLOTS) -> list[Path]:
    """Small real SEVIRI L1.5 NetCDF files (48x64 LR pixels, daytime) for ``slots``."""
    from cloudsr_hpc.data.geometry import SEVIRI_FULL_DISK
    from cloudsr_hpc.data.synthetic.formats.seviri_nc import write_seviri_nc
    grid = SEVIRI_FULL_DISK.window(300, 1900, 48, 64)
    ramp = np.linspace(0, 5, grid.ncols, dtype=np.float32)
    fields = {c: np.full(grid.shape, 30.0 if c.startswith(("VIS", "IR_016")) else 250.0, np.float32) + ramp
              for c in CHANNELS}
    return [write_seviri_nc(out, grid, fields, t)[0] for t in slots]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_export(tmp_path_factory.mktemp("model") / "reg", stage="regression", base=8, mult=(1, 2))


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("archive")
    seviri_files(root)
    return root


def sets(model):
    return [a for s in ("stages=regression", f"regression_checkpoint={model}", "tile_lr=64", "overlap_lr=8",
                        "chunk=128", "quicklook=false", "cpu_threads=1") for a in ("--set", s)]


def create(root, name, archive, model, *extra, run=run_cli):
    """A campaign of the two archive slots (plus one without input), no workers started."""
    p = run("campaign", "--name", name, "--root", root, "--start", "2024-06-01T11:00", "--end",
                "2024-06-01T11:30", "--archive", archive, "--workers", "0", *sets(model), *extra)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.splitlines()[-1])


# ------------------------------------------------------------------------------ row 5: names, quoting
def test_row5_hostile_campaign_names_are_refused_everywhere(tmp_path, archive, model, cli_here):
    root, canary = tmp_path / "root", tmp_path / "PWNED"
    bad = [f"x;touch {canary}", f"$(touch {canary})", "a\nb", "..", ".", "a" * 65, "a/b", "a b"]
    for name in bad:
        p = cli_here("campaign", "--name", name, "--root", root, "--start", "2024-06-01T11:00",
                    "--archive", archive, "--workers", "0", "--dry-run", *sets(model))
        one_error(p, "campaign name", "A-Z a-z 0-9 . _ -")
    for cmd in (["status"], ["cancel"], ["campaign", "resume"], ["campaign", "retry"],
                ["campaign", "rebuild"]):
        one_error(cli_here(*cmd, f"$(touch {canary})", "--root", root), "campaign name")
    p = run_cli("campaign", "--name", f"a\n$(touch {canary})", "--root", root, "--start", "2024-06-01T11:00",
                "--archive", archive, "--workers", "0", *sets(model))
    one_error(p, "campaign name", "\\n$(touch")  # shown on one line, as repr
    assert not canary.exists() and not root.exists()


def test_row5_printed_commands_quote_user_paths(tmp_path, archive, model, cli_here):
    root = tmp_path / "r $(touch PWNED) 'q'"
    out = create(root, "ok-1.x_y", archive, model, run=cli_here)
    assert shlex.split(out["start_with"])[-1] == out["campaign"] == str(root.resolve() / "ok-1.x_y")
    dest = tmp_path / "o; rm -rf x"
    p = cli_here("infer", "--date", "2024-06-01T11:00", "--out", dest, "--executor", "local", "--dry-run",
                 "--set", "stages=regression", "--set", f"regression_checkpoint={model}")
    assert p.returncode == 0, p.stderr[-1500:]
    argv = shlex.split(p.stdout.strip().splitlines()[-1])
    assert argv[argv.index("--out") + 1] == str(dest.resolve())
    p = cli_here("status", "--root", tmp_path / "a\nb")
    one_error(p, "control characters")


def test_row5_no_shell_true_anywhere():
    hits = [str(f) for f in (ROOT / "cloudsr_hpc").rglob("*.py") if "shell=True" in f.read_text()]
    assert not hits, hits


# ------------------------------------------------------------------------------ row 6: confined paths
def test_row6_status_stays_in_the_root_and_creates_nothing(tmp_path, archive, model, cli_here):
    root = tmp_path / "root"
    (root / "plain").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("../outside", str(outside), "/etc"):
        one_error(cli_here("status", name, "--root", root), "campaign name")
    one_error(run_cli("status", "nosuch", "--root", root), "no campaign 'nosuch'", str(root))
    one_error(cli_here("status", "plain", "--root", root), "no campaign 'plain'")
    one_error(cli_here("cancel", "nosuch", "--root", root), "no campaign 'nosuch'")
    one_error(cli_here("campaign", "resume", "nosuch", "--root", root), "no campaign 'nosuch'")
    assert sorted(p.name for p in root.iterdir()) == ["plain"] and not any((root / "plain").iterdir())
    assert not any(outside.iterdir())
    # a campaign directory that is a symlink out of the root is not followed
    create(outside, "elsewhere", archive, model, run=cli_here)
    (root / "evil").symlink_to(outside / "elsewhere")
    one_error(cli_here("status", "evil", "--root", root), "outside the campaign root")


# ------------------------------------------------------------------------------ row 11: bounds
def test_row11_huge_ranges_and_counts_are_refused_at_once(tmp_path, archive, model, cli_here):
    root = tmp_path / "root"
    t0 = time.time()
    p = run_cli("campaign", "--name", "century", "--root", root, "--start", "2024-01-01", "--end",
                "2124-01-01", "--every", "1min", "--archive", archive, "--dry-run", *sets(model))
    one_error(p, "52,594,561 slots", "1,000,000")
    assert time.time() - t0 < 60 and not root.exists()
    for flag, value, want in (("--workers", "100000", "between 0 and 1000"),
                              ("--workers", "-1", "between 0 and 1000"),
                              ("--max-attempts", "0", "between 1 and 100")):
        p = cli_here("campaign", "--name", "w", "--root", root, "--start", "2024-06-01T11:00", "--archive",
                     archive, flag, value, *sets(model))
        one_error(p, f"{flag} {value}", want)
    for ranks in ("-4", "0", "1000000"):
        one_error(cli_here("infer", "--date", "2024-06-01T11:00", "--ranks", ranks, "--executor", "local",
                           "--dry-run"),
                  f"--ranks {ranks}", "between 1 and 1024")
    assert not root.exists()


def test_row11_slot_count_is_checked_before_any_slot_is_made():
    from cloudsr_hpc.data.index import count_slots, slot_times
    t = dt.datetime(2024, 1, 1)
    with pytest.raises(InputError, match="52,594,561 slots"):
        slot_times(t, dt.datetime(2124, 1, 1), dt.timedelta(minutes=1))
    assert count_slots(t, t + dt.timedelta(hours=1), dt.timedelta(minutes=15)) == 5
    from cloudsr_hpc.data.index import parse_every
    from cloudsr_hpc.errors import CloudSRError
    for tiny in ("0min", "0.0000001s"):  # the second once rounded to a zero step: a division by zero
        with pytest.raises(CloudSRError, match="at least 1 s"):
            parse_every(tiny)


# ------------------------------------------------------------------------------ row 12: lost ledger
def test_row12_lost_or_corrupt_ledger_is_one_line_and_rebuilt(tmp_path, archive, model, cli_here):
    root = tmp_path / "root"
    cdir = Path(create(root, "c", archive, model, run=cli_here)["campaign"])
    ledger = cdir / "ledger.sqlite"
    good = ledger.read_bytes()
    cases = {"missing": lambda: ledger.unlink(), "empty": lambda: ledger.write_bytes(b""),
             "malformed": lambda: ledger.write_bytes(good[: len(good) // 2]),
             "not a database": lambda: ledger.write_bytes(b"garbage" * 100)}
    for want, damage in cases.items():
        damage()
        for cmd in (["status", "c"], ["cancel", "c"], ["campaign", "retry", "c", "--workers", "0"]):
            one_error(cli_here(*cmd, "--root", root), str(ledger), want, "campaign rebuild c")
        assert want != "missing" or not ledger.exists()  # status never made a new empty one
    one_error(run_cli("status", "c", "--root", root), str(ledger), "campaign rebuild c")
    # creating it again must not start afresh over a campaign whose outputs may exist
    p = cli_here("campaign", "--name", "c", "--root", root, "--start", "2024-06-01T11:00", "--end",
                 "2024-06-01T11:30",
                "--archive", archive, "--workers", "0", *sets(model))
    one_error(p, str(ledger), "campaign rebuild c")
    p = run_cli("campaign", "rebuild", "c", "--root", root)
    assert p.returncode == 0, p.stderr[-1500:]
    assert json.loads(p.stdout.splitlines()[-1])["scenes"] == 3
    assert list(cdir.glob("ledger.sqlite.broken-*"))
    p = cli_here("status", "c", "--root", root, "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["counts"]["pending"] == 2
    one_error(cli_here("campaign", "rebuild", "c", "--root", root), "the ledger verifies")


def test_row12_rebuild_counts_done_only_verified_outputs(tmp_path, archive, model, cli_here):
    from cloudsr_hpc.data.sensors import load_registry
    from cloudsr_hpc.orchestration import campaign as cp
    from cloudsr_hpc.orchestration.ledger import Ledger
    cdir = Path(create(tmp_path / "root", "v", archive, model, run=cli_here)["campaign"])
    import torch
    threads = torch.get_num_threads()
    try:
        # 11:00, really computed
        assert cp.work(cdir, owner="local:test:1", limit=1) == {"done": 1, "failed": 0, "preempted": 0}
    finally:
        torch.set_num_threads(threads)  # the campaign's cpu_threads=1 must not slow the rest of the session
    led = Ledger(cdir / "ledger.sqlite")
    first, second = [s.output for s in led.scenes()[:2]]
    led.close()
    Path(second).write_bytes(Path(first).read_bytes()[:4000])  # 11:15's output: present, truncated
    (cdir / "ledger.sqlite").unlink()
    changed = cp.rebuild(cdir, load_registry())
    assert changed["scenes"] == 3 and changed["done"] == [SLOTS[0].isoformat()]
    led = cp.open_ledger(cdir)
    assert [s.state for s in led.scenes()] == ["done", "pending", "missing"]
    led.close()


def test_row12_sqlite_errors_past_the_checks_name_the_ledger(tmp_path):
    from cloudsr_hpc.orchestration import campaign as cp
    with pytest.raises(InputError, match=r"ledger\.sqlite: ledger error \(database is locked\)"):
        with cp.ledger_errors(tmp_path):
            raise sqlite3.OperationalError("database is locked")


# ------------------------------------------------------------------------------ row 13: retry
def test_row13_retry_puts_quarantined_scenes_back(tmp_path, archive, model, cli_here):
    from cloudsr_hpc.orchestration.ledger import Ledger
    root = tmp_path / "root"
    cdir = Path(create(root, "q", archive, model, run=cli_here)["campaign"])
    led = Ledger(cdir / "ledger.sqlite")
    for slot in SLOTS:  # 11:00 quarantined (its one attempt used up), 11:15 failed
        sc = led.claim("local:test:1", 3)
        assert sc.slot == slot.isoformat()
        led.fail(sc.slot, "local:test:1", "input broken", 1 if slot == SLOTS[0] else 3)
    led.close()
    p = run_cli("campaign", "retry", "q", "--quarantined", "--workers", "0", "--root", root)
    assert p.returncode == 0, p.stderr[-1500:]
    led = Ledger(cdir / "ledger.sqlite")
    states = {s.slot: (s.state, s.attempts, s.error) for s in led.scenes()}
    assert states[SLOTS[0].isoformat()] == ("pending", 0, None)
    assert states[SLOTS[1].isoformat()][0] == "failed"
    assert len(led.attempts(SLOTS[0].isoformat())) == 1  # the history stays
    led.close()
    assert cli_here("campaign", "retry", "q", "--workers", "0", "--root", root).returncode == 0
    led = Ledger(cdir / "ledger.sqlite")
    assert {s.state for s in led.scenes() if s.files} == {"pending"}
    led.close()
    one_error(cli_here("campaign", "retry", "nosuch", "--root", root), "no campaign 'nosuch'")


# ------------------------------------------------------------------------------ row 16: --stages 1
def test_row16_stage_names_parse_as_readme_says(tmp_path, cli_here):
    assert load(InferConfig, "infer.yaml", ["stages=1"]).stages == "1"
    cfg = tmp_path / "stage.yaml"
    cfg.write_text('stage: "1"\n')  # a quoted number is still Stage 1
    assert load(StageConfig, cfg).stage == 1
    ck = make_export(tmp_path / "s1", stage=1)
    p = cli_here("infer", "--date", "2024-06-01T11:00", "--archive", tmp_path, "--executor", "local",
                 "--dry-run", "--set", f"stage1_checkpoint={ck}", "--set", "stages=1")
    assert p.returncode == 0, p.stderr[-1500:]
    p = subprocess.run([sys.executable, "-m", "cloudsr_hpc.infer", "--stages", "1", "--input",
                        str(tmp_path / "no.nc"),
                        "--set", f"stage1_checkpoint={ck}", "--out", str(tmp_path / "out")],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    one_error(p, "no.nc")  # past the config: the missing input is what is wrong


# ------------------------------------------------------------------------------ row 17: one-line errors
def test_row17_export_with_empty_metadata(tmp_path):
    import torch

    from cloudsr_hpc.models.cascade import Stage
    from cloudsr_hpc.models.export import export_model
    path = export_model(tmp_path / "empty", {"w": torch.zeros(1)}, {})
    with pytest.raises(InputError, match="export metadata lacks stage, channels, scale"):
        Stage.load(path)
    p = subprocess.run([sys.executable, "-m", "cloudsr_hpc.infer", "--input", str(tmp_path / "x.nc"), "--set",
                        "stages=regression", "--set", f"regression_checkpoint={path}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    one_error(p, str(path), "export metadata lacks")


def test_row17_manifest_that_is_not_an_object(tmp_path):
    import torch

    from cloudsr_hpc.models.export import export_model, load_model
    path = export_model(tmp_path / "m", {"w": torch.zeros(1)}, {"stage": 2})
    (path.parent / "manifest.json").write_text("[]")
    with pytest.raises(InputError, match="manifest.json: unreadable manifest"):
        load_model(path)


def test_row17_satpy_key_error_names_the_field(tmp_path):
    f = seviri_files(tmp_path / "in", SLOTS[:1])[0]
    with netCDF4.Dataset(f, "a") as nc:
        nc["ch9"].delncattr("add_offset")  # IR_108's calibration offset
    out = tmp_path / "scene.nc"
    p = run_cli("read", f, "--sensor", "seviri", "--channels", "IR_108", "--out", out)
    one_error(p, str(f), "IR_108", "KeyError", "add_offset")
    assert not out.exists()


# ------------------------------------------------------------------------------ row 18: config ranges
@pytest.mark.parametrize("cls,name,override,needle", [
    (StageConfig, "stage1.yaml", "train.val_every=0", "train.val_every = 0: must be >= 1"),
    (StageConfig, "stage1.yaml", "train.ckpt_every=0", "train.ckpt_every = 0: must be >= 1"),
    (StageConfig, "stage1.yaml", "train.log_every=0", "train.log_every = 0: must be >= 1"),
    (StageConfig, "stage1.yaml", "train.grad_accum=0", "train.grad_accum = 0: must be >= 1"),
    (StageConfig, "stage1.yaml", "train.ema_decay=5", "train.ema_decay = 5.0: must be in [0, 1)"),
    (StageConfig, "stage1.yaml", "train.ema_decay=1", "train.ema_decay = 1.0: must be in [0, 1)"),
    (StageConfig, "stage1.yaml", "train.grad_clip=-1", "train.grad_clip = -1.0: must be >= 0"),
    (StageConfig, "stage1.yaml", "train.seed=-1", "train.seed = -1: must be >= 0"),
    (StageConfig, "stage1.yaml", "model.num_res_blocks=0", "model.num_res_blocks = 0: must be >= 1"),
    (StageConfig, "stage1.yaml", "model.dropout=3", "model.dropout = 3.0: must be in [0, 1)"),
    (StageConfig, "stage1.yaml", "model.base_channels=0", "model.base_channels = 0: must be >= 1"),
    (StageConfig, "stage1.yaml", "model.channel_mult=[1,0]", "channel_mult = [1, 0]"),
    (StageConfig, "stage1.yaml", "model.attention_levels=[7]",
     "attention_levels = [7]: each must be in [0, "),
    (StageConfig, "stage1.yaml", "diffusion.kappa=0", "diffusion.kappa = 0.0: must be > 0"),
    (StageConfig, "stage1.yaml", "loss.grad_weight=-1", "loss.grad_weight = -1.0: must be >= 0"),
    (StageConfig, "stage1.yaml", "loss.spectral_weight=-1", "loss.spectral_weight = -1.0: must be >= 0"),
    (StageConfig, "stage2.yaml", "data.degradation.seed=-2", "degradation.seed = -2: must be >= 0"),
    (InferConfig, "infer.yaml", "cpu_threads=-1", "cpu_threads = -1: must be in [0, 1024]"),
    (InferConfig, "infer.yaml", "writer_threads=-1", "writer_threads = -1: must be in [0, 256]"),
    (InferConfig, "infer.yaml", "halo_hr=-2", "halo_hr = -2: must be >= -1"),
    (InferConfig, "infer.yaml", "seed=-1", "seed = -1: must be >= 0"),
    (EvaluateConfig, "evaluate.yaml", "data_range=0", "data_range = 0.0: must be > 0"),
    (EvaluateConfig, "evaluate.yaml", "max_pairs=-1", "max_pairs = -1: must be >= 0"),
    (EvaluateConfig, "evaluate.yaml", "cpu_threads=-3", "cpu_threads = -3: must be in [0, 1024]"),
    (PairsFile, "pairs.yaml", "synth.every_minutes=0", "synth.every_minutes = 0.0: must be > 0"),
    (PairsFile, "pairs.yaml", "pairs.compression_level=12",
     "pairs.compression_level = 12: must be in [0, 9]"),
])
def test_row18_every_key_is_range_checked(cls, name, override, needle):
    with pytest.raises(ConfigError) as e:
        load(cls, name, [override])
    assert needle in str(e.value) and name in str(e.value) and "\n" not in str(e.value)


def test_row18_out_of_range_config_is_one_line_on_the_cli():
    p = run_cli("config", "configs/stage1.yaml", "--set", "train.val_every=0")
    one_error(p, "configs/stage1.yaml: train.val_every = 0: must be >= 1")


def test_row18_cluster_and_job_counts():
    from cloudsr_hpc.config import build
    from cloudsr_hpc.schema import ClusterProfile, JobResources
    with pytest.raises(ConfigError, match="cpus_per_task = -1: must be >= 0"):
        build(ClusterProfile, {"cpus_per_task": -1}, "cluster.yaml: ")
    with pytest.raises(ConfigError, match="nodes = 0: must be >= 1"):
        build(JobResources, {"nodes": 0}, "jobs/x.yaml: resources")

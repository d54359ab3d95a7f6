"""Stopping work on purpose is not failing it: cancel, preemption and time-limit signals give the scene
in hand back uncounted, leave no temporaries, and a rerun (or a requeued job) finishes the rest.
Owners are unique across processes of one allocation, and liveness is decided outside the ledger's
write lock, conservatively when the scheduler does not answer."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cloudsr_hpc.inference.pipeline import verify_output
from cloudsr_hpc.orchestration import campaign as cp
from cloudsr_hpc.orchestration.ledger import Ledger
from tests.conftest import ROOT, make_export, run_cli, wait_for

pytestmark = pytest.mark.fault  # each test injects a fault: counted in the suite's 'faults:' line

SLOTS = [f"2024-06-01T11:{m:02d}:00" for m in (0, 15, 30, 45)]  # four of the archive's eight slots


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory):
    """A Stage 2 export (2 sampling steps, small tiles): a scene is many batches, so a signal finds
    one in progress."""
    return make_export(tmp_path_factory.mktemp("s2") / "s2", stage=2, base=8, mult=(1, 2), steps=2, seed=3)


def infer_sets(model):
    return [a for s in ("stages=2", f"stage2_checkpoint={model}", "tile_lr=32", "overlap_lr=8", "chunk=128",
                        "quicklook=false", "batch_size=2") for a in ("--set", s)]


def temporaries(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob(".*") if p.name.endswith((".part", ".lock")))


# ------------------------------------------------------------------------------------- ledger
def one_scene_ledger(tmp_path) -> Ledger:
    led = Ledger(tmp_path / "ledger.sqlite")
    led.add_scenes([("2024-06-01T12:00:00", ["a.nc"], str(tmp_path / "out.nc"))])
    return led


def test_a_scene_given_back_or_lost_does_not_spend_an_attempt_a_failure_does(tmp_path):
    led = one_scene_ledger(tmp_path)
    sc = led.claim("w1", max_attempts=2)
    assert sc.attempts == 1
    led.give_back(sc.slot, "w1", "stopped by SIGTERM")
    (s,) = led.scenes()
    assert (s.state, s.attempts, s.owner) == ("pending", 0, None)
    assert [a[4] for a in led.attempts()] == ["preempted"]
    led.claim("w2", max_attempts=2)
    assert led.release_lost(lambda o: False) == [s.slot]
    (s,) = led.scenes()
    assert (s.state, s.attempts) == ("pending", 0)  # a dead worker is not the scene's failure
    assert [a[4] for a in led.attempts()] == ["preempted", "lost"]
    led.claim("w3", max_attempts=2)
    assert led.fail(s.slot, "w3", "bad input", max_attempts=2) == "failed"
    assert led.scenes()[0].attempts == 1
    led.set_cancelled(True)
    assert led.cancelled()
    led.set_cancelled(False)
    assert led.cancelled() is None
    led.close()


def test_liveness_is_asked_outside_the_write_lock_once_per_owner(tmp_path):
    led = one_scene_ledger(tmp_path)
    led.claim("w1", max_attempts=2)
    asked = []

    def alive(owner):
        asked.append(owner)
        other = sqlite3.connect(tmp_path / "ledger.sqlite", timeout=0)
        other.execute("BEGIN IMMEDIATE")  # would fail with 'database is locked' inside the transaction
        other.execute("ROLLBACK")
        other.close()
        return True

    assert led.release_lost(alive) == [] and asked == ["w1"]
    led.close()


def owner_of(env: dict) -> str:
    code = "from cloudsr_hpc.orchestration.campaign import owner_here; print(owner_here())"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                          check=True, cwd=ROOT).stdout.strip()


def test_workers_of_one_allocation_have_distinct_owners_and_dead_ones_are_found(tmp_path, monkeypatch):
    a = owner_of({"SLURM_JOB_ID": "77", "SLURM_PROCID": "0"})
    b = owner_of({"SLURM_JOB_ID": "77", "SLURM_PROCID": "1"})
    c = owner_of({"SLURM_JOB_ID": "77", "SLURM_PROCID": "0"})  # a local worker inside the same salloc
    assert len({a, b, c}) == 3 and all(o.startswith("slurm:77/") for o in (a, b, c))
    assert cp.parse_owner(b)["proc"].endswith(".1") and cp.parse_owner(a)["job"] == "77"
    # those processes have exited: on this host their pids say they are dead, whatever squeue says
    assert not cp.liveness()(a)
    here = cp.owner_here()
    assert cp.liveness()(here)  # this very process
    o = cp.parse_owner(here)
    reused = f"local:{o['host']}:{o['pid']}:{int(o['start']) + 1}"  # same pid, another process
    assert not cp.liveness()(reused)
    # a requeued incarnation of the same task and rank declares its predecessor dead, not its sibling
    me = f"slurm:77/0@elsewhere:{os.getpid()}"
    other_host = "slurm:77/0@otherhost:1"
    sibling = "slurm:77/1@otherhost:1"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text("#!/bin/sh\necho 'slurm_load_jobs error: Socket timed out' >&2\nexit 1\n")
    (bin_dir / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    assert cp.slurm_states() is None
    alive = cp.liveness(me)
    assert not alive(other_host)
    assert alive(sibling)  # squeue failed: unknown means alive, never released on a scheduler hiccup
    assert alive(f"local:otherhost:{os.getpid()}")


@pytest.mark.slow
def test_liveness_follows_the_real_queue(slurm_cluster):
    job = subprocess.run(["sbatch", "--parsable", "--wrap", "sleep 120", "--output=/dev/null"],
                         capture_output=True, text=True, check=True).stdout.strip().split(";")[0]
    owner = f"slurm:{job}/0@otherhost:1"
    assert wait_for(lambda: cp.liveness()(owner), timeout=60)
    subprocess.run(["scancel", job], check=True)
    assert wait_for(lambda: not cp.liveness()(owner), timeout=120)


# ------------------------------------------------------------------------------------- campaigns
def test_cancel_stops_local_workers_gives_the_scene_back_and_resume_finishes(campaign_archive, slow_model,
                                                                            tmp_path):
    root, name = tmp_path / "campaigns", "stop"
    start = run_cli("campaign", "--name", name, "--root", root, "--start", SLOTS[0], "--end", SLOTS[-1],
                    "--archive", campaign_archive, "--executor", "local", "--workers", "1", "--no-wait",
                    *infer_sets(slow_model))
    assert start.returncode == 0, start.stderr[-2000:]
    pids = [int(j) for j in json.loads(start.stdout.strip().splitlines()[-1])["jobs"]]
    out = root / name / "output"
    assert wait_for(lambda: any(p.name.endswith(".part") for p in out.glob(".*")), timeout=300, every=0.05)
    t0 = time.time()
    cancel = run_cli("cancel", name, "--root", root)
    assert cancel.returncode == 0, cancel.stderr[-2000:]
    assert json.loads(cancel.stdout)["signalled"] == [str(p) for p in pids]
    assert wait_for(lambda: not any(cp._pid_alive(p) for p in pids), timeout=120), "workers did not stop"
    print(f"workers stopped {time.time() - t0:.1f} s after the cancel")
    led = Ledger(root / name / "ledger.sqlite")
    scenes = led.scenes()
    states = [a[4] for a in led.attempts()]
    assert led.cancelled()
    led.close()
    assert "failed" not in states and "lost" not in states and "running" not in states, states
    assert states.count("preempted") <= 1 and any(s.state == "pending" for s in scenes)
    assert all(s.attempts == (1 if s.state == "done" else 0) for s in scenes), scenes  # nothing spent
    assert temporaries(out) == []
    resume = run_cli("campaign", "resume", name, "--root", root, "--executor", "local", "--workers", "1")
    assert resume.returncode == 0, resume.stderr[-2000:]
    led = Ledger(root / name / "ledger.sqlite")
    assert led.cancelled() is None and {s.state for s in led.scenes()} == {"done"}
    for s in led.scenes():
        verify_output(s.output)
        assert [a[4] for a in led.attempts(s.slot)].count("done") == 1
    led.close()


ALL_SLOTS = [f"2024-06-01T{h:02d}:{m:02d}:00" for h in (11, 12) for m in (0, 15, 30, 45)]


def test_workers_on_two_hosts_share_one_campaign_and_never_compute_twice(campaign_archive, tmp_path):
    """Two workers on one campaign directory, one of them in its own UTS namespace (another host
    name, as a second node would have): every scene is claimed by exactly one of them."""
    model = make_export(tmp_path / "reg", stage="regression", base=8, mult=(1, 2))
    root, name = tmp_path / "campaigns", "two"
    sets = [a for s in ("stages=regression", f"regression_checkpoint={model}", "tile_lr=64", "overlap_lr=8",
                        "chunk=128", "quicklook=false") for a in ("--set", s)]
    made = run_cli("campaign", "--name", name, "--root", root, "--start", ALL_SLOTS[0], "--end",
                   ALL_SLOTS[-1], "--archive", campaign_archive, "--workers", "0", *sets)
    assert made.returncode == 0, made.stderr[-2000:]
    worker = [sys.executable, "-m", "cloudsr_hpc.orchestration.worker", str(root / name)]
    other = ["unshare", "--uts", "sh", "-c", 'hostname cloudsr-second-host && exec "$0" "$@"', *worker]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for cmd in (worker, other)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    led = Ledger(root / name / "ledger.sqlite")
    try:
        assert {s.state for s in led.scenes()} == {"done"}
        for slot in ALL_SLOTS:
            assert [a[4] for a in led.attempts(slot)] == ["done"], led.attempts(slot)
        hosts = {cp.parse_owner(a[1])["host"] for a in led.attempts()}
        assert hosts == {os.uname().nodename, "cloudsr-second-host"}, hosts
    finally:
        led.close()


# ------------------------------------------------------------------------------------- infer
def infer_cmd(archive, out, model):
    return [sys.executable, "-m", "cloudsr_hpc.infer", "--quiet", "--date", SLOTS[0], "--end", SLOTS[-1],
            "--archive", str(archive), "--out", str(out), *map(str, infer_sets(model))]


def test_sigusr1_stops_infer_cleanly_and_a_rerun_does_the_rest(campaign_archive, slow_model, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(infer_cmd(campaign_archive, out, slow_model), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: any(p.name.endswith(".part") for p in out.glob(".*")), timeout=300, every=0.05)
    proc.send_signal(signal.SIGUSR1)  # what --signal=USR1@60 sends before the time limit
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-2000:]
    assert "stopped by SIGUSR1" in err and "Traceback" not in err
    done = sorted(out.glob("*.nc"))
    assert len(done) < len(SLOTS) and temporaries(out) == []
    for p in done:
        verify_output(p, full=True)
    again = subprocess.run(infer_cmd(campaign_archive, out, slow_model), cwd=ROOT, capture_output=True,
                           text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert len(list(out.glob("*.nc"))) == len(SLOTS) and temporaries(out) == []
    assert again.stdout.count('"output"') == len(SLOTS) - len(done)  # the finished ones were kept


@pytest.mark.slow
def test_infer_job_near_its_time_limit_requeues_and_finishes(slurm_cluster, campaign_archive, slow_model,
                                                             tmp_path):
    out, log = tmp_path / "out", tmp_path / "job.out"
    cmd = ["sbatch", "--parsable", "--ntasks-per-node=1", f"--output={log}",
           str(ROOT / "slurm" / "infer.sh"), *infer_cmd(campaign_archive, out, slow_model)[4:]]
    job = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip().split(";")[0]
    assert wait_for(lambda: any(p.name.endswith(".part") for p in out.glob(".*")), timeout=600), \
        log.read_text()[-3000:] if log.exists() else "no log"
    subprocess.run(["scancel", "--signal=USR1", job], check=True)  # what --signal=USR1@60 sends

    def finished():
        p = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job, "-o", "State"], capture_output=True,
                           text=True)
        return p.stdout.split()[-1:] == ["COMPLETED"] and "restart 1" in log.read_text()
    assert wait_for(finished, timeout=900, every=1), log.read_text()[-3000:]
    text = log.read_text()
    assert "requeueing job" in text and "restart 1" in text, text[-3000:]
    assert len(list(out.glob("*.nc"))) == len(SLOTS) and temporaries(out) == []
    for p in out.glob("*.nc"):
        verify_output(p)

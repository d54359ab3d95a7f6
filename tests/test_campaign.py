"""Reprocessing campaigns: ledger, local and Slurm executors, fault injection, resume, status."""
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from cloudsr_hpc.inference.pipeline import verify_output
from cloudsr_hpc.orchestration.campaign import _pid_alive, parse_owner
from cloudsr_hpc.orchestration.ledger import Ledger
from tests.conftest import make_export, run_cli, wait_for

SLOTS = [f"2024-06-01T{h:02d}:{m:02d}:00" for h in (11, 12) for m in (0, 15, 30, 45)]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_export(tmp_path_factory.mktemp("model") / "reg", stage="regression", base=8, mult=(1, 2))


def infer_sets(model):
    return [a for s in ("stages=regression", f"regression_checkpoint={model}", "tile_lr=64", "overlap_lr=8",
                        "chunk=128", "quicklook=false") for a in ("--set", s)]


def ledger_of(root, name):
    return Ledger(Path(root) / name / "ledger.sqlite")


def running_claim_with_part(root, name):
    """(slot, owner) of a scene being written right now (its temporary output exists)."""
    out = Path(root) / name / "output"
    led = ledger_of(root, name)
    try:
        for sc in led.scenes():
            if sc.state == "running" and list(out.glob(f".{Path(sc.output).name}.*part")):
                return sc.slot, sc.owner
    finally:
        led.close()
    return None


def check_complete(root, name, expect_done, lost_slots=(), lost_owners=(), stopped_owners=()):
    """Every expected scene done with a verified output and exactly one successful attempt; the
    given slots / workers have an attempt recorded as lost; ``stopped_owners`` (told to stop by a
    signal) gave their scene back (``preempted``, uncounted) or had just finished it -- never a
    failed or lost attempt."""
    led = ledger_of(root, name)
    try:
        scenes = {s.slot: s for s in led.scenes()}
        for slot in expect_done:
            assert scenes[slot].state == "done", (slot, scenes[slot])
            verify_output(scenes[slot].output)
            states = [a[4] for a in led.attempts(slot)]
            assert states.count("done") == 1, (slot, states)  # never computed twice
        for slot in lost_slots:
            assert "lost" in [a[4] for a in led.attempts(slot)], slot
        for owner in lost_owners:  # the scene it held when stopped (it may have finished another first)
            assert any(a[1] == owner and a[4] == "lost" for a in led.attempts()), (owner, led.attempts())
        for owner in stopped_owners:
            mine = [a[4] for a in led.attempts() if a[1] == owner]
            assert mine and set(mine) <= {"done", "preempted"}, (owner, led.attempts())
        return scenes, led.attempts()
    finally:
        led.close()


# --------------------------------------------------------------------------------------- local
def test_job_definitions_and_cluster_profiles_load():
    from cloudsr_hpc.orchestration.executors import load_job, load_profile
    for kind in ("train", "infer", "campaign"):
        job = load_job(kind)
        assert job.kind == kind and job.inputs and job.outputs and all(isinstance(x, str) for x in job.inputs)
    for name in ("local", "localslurm", "example-gpu"):
        assert load_profile(name).time_minutes > 0


def test_dry_runs_print_the_submission_and_submit_nothing(slurm_cluster, campaign_archive, model, tmp_path):
    # Submitit's Slurm executor looks for srun even on a dry run: the session's cluster provides it
    p = run_cli("train", "--stage", "2", "--executor", "slurm", "--cluster", "example-gpu", "--after", "123",
                "--dry-run", "--set", "train.steps=10")
    assert p.returncode == 0, p.stderr[-1500:]
    first = p.stdout.splitlines()[0]
    assert first.startswith("sbatch ") and "--dependency=afterok:123" in first and "--partition=gpu" in first
    assert "--gpus-per-node=4" in first and "--account=my_project" in first and "train_stage2.sh" in first
    assert "#SBATCH --requeue" in p.stdout  # the script itself follows
    p = run_cli("campaign", "--name", "dry", "--root", tmp_path / "c", "--start", "2024-06-01T11:00", "--end",
                "2024-06-01T12:45", "--archive", campaign_archive, "--executor", "slurm", "--cluster",
                "localslurm", "--workers", "4", "--after", "77", "--dry-run", *infer_sets(model))
    assert p.returncode == 0, p.stderr[-1500:]
    assert ("--array=0-3%2" in p.stdout and "'dependency': 'afterok:77'" in p.stdout
            and "#SBATCH --partition=debug" in p.stdout)
    assert "8 scenes" in p.stderr and not (tmp_path / "c").exists()


def test_bad_campaign_input_fails_before_anything_is_submitted(campaign_archive, model, tmp_path):
    common = ["--root", tmp_path / "c", "--archive", campaign_archive, "--executor", "local",
              *infer_sets(model)]
    cases = {
        "unknown date format": ["--name", "a", "--start", "June 1st"],
        "is before": ["--name", "b", "--start", "2024-06-01T12:00", "--end", "2024-06-01T11:00"],
        "unknown cluster profile": ["--name", "c", "--start", "2024-06-01T12:00", "--cluster", "nosuch"],
        "checkpoint does not exist": ["--name", "d", "--start", "2024-06-01T12:00", "--set",
                                      f"regression_checkpoint={tmp_path / 'none.pt'}"],
    }
    for want, args in cases.items():
        p = run_cli("campaign", *common, *args)
        errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
        assert p.returncode == 2 and len(errors) == 1 and want in errors[0], (want, p.stderr[-1500:])
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


@pytest.mark.slow
def test_default_executor_is_slurm_only_when_a_controller_answers(tmp_path, monkeypatch):
    from cloudsr_hpc.orchestration.executors import default_executor
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("sbatch", "exit 0"), ("scontrol", "echo 'Slurmctld(primary) at vm is DOWN'; exit 1")):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    assert default_executor() == "local"  # sbatch on PATH, nobody answering: not a cluster
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho 'Slurmctld(primary) at vm is UP'\n")
    assert default_executor() == "slurm"
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert default_executor() == "local"


def test_local_campaign_survives_a_killed_worker_and_quarantines_a_bad_scene(campaign_archive, model,
                                                                             tmp_path):
    archive = tmp_path / "archive"
    shutil.copytree(campaign_archive, archive)
    bad = next(archive.rglob("*20240601111509.nc"))  # the 11:15 slot: truncated
    bad.write_bytes(bad.read_bytes()[:5000])
    root, name = tmp_path / "campaigns", "kill"
    start = run_cli("campaign", "--name", name, "--root", root, "--start", "2024-06-01T11:00", "--end",
                    "2024-06-01T13:00", "--archive", archive, "--executor", "local", "--workers", "2",
                    "--max-attempts", "2", "--no-wait", *infer_sets(model))
    assert start.returncode == 0, start.stderr[-2000:]
    pids = [int(j) for j in json.loads(start.stdout.strip().splitlines()[-1])["jobs"]]
    hit = wait_for(lambda: running_claim_with_part(root, name), timeout=300, every=0.02)
    assert hit, "no worker reached the write phase"
    _, owner = hit
    victim = int(parse_owner(owner)["pid"])
    os.kill(victim, signal.SIGKILL)  # kill -9 mid-write
    assert wait_for(lambda: not any(_pid_alive(p) for p in pids), timeout=600), "workers did not finish"
    out = root / name / "output"
    st = run_cli("status", name, "--root", root, "--json")
    counts = json.loads(st.stdout)["counts"]
    assert counts["missing"] == 1 and counts["running"] == 0  # status released the dead worker's claim
    assert counts["done"] + counts["pending"] + counts["failed"] + counts["quarantined"] == 8
    resume = run_cli("campaign", "resume", name, "--root", root, "--executor", "local", "--workers", "2")
    assert resume.returncode == 2, resume.stderr[-2000:]  # done, except the quarantined scene
    good = [s for s in SLOTS if s != "2024-06-01T11:15:00"]
    scenes, _ = check_complete(root, name, good, lost_owners=[owner])
    assert (scenes["2024-06-01T11:15:00"].state == "quarantined"
            and bad.name in scenes["2024-06-01T11:15:00"].error)
    assert scenes["2024-06-01T11:15:00"].attempts == 2
    assert scenes["2024-06-01T13:00:00"].state == "missing" and scenes["2024-06-01T13:00:00"].attempts == 0
    # no temporaries
    assert sorted(p.name for p in out.iterdir()) == sorted(Path(scenes[s].output).name for s in good)
    table = run_cli("status", name, "--root", root).stdout
    assert "done 7" in table and "quarantined 1" in table and "missing 1" in table and bad.name in table
    n_attempts = len(ledger_of(root, name).attempts())
    again = run_cli("campaign", "resume", name, "--root", root, "--executor", "local", "--workers", "1")
    assert again.returncode == 2 and len(ledger_of(root, name).attempts()) == n_attempts  # nothing redone


# --------------------------------------------------------------------------------------- Slurm
def sacct_states(job: str) -> dict:
    p = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job, "-o", "JobID,State"], capture_output=True,
                       text=True)
    return dict(ln.split("|")[:2] for ln in p.stdout.split() if "|" in ln)


def queue_empty(prefix: str) -> bool:
    p = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True)
    return not any(j == prefix or j.startswith((prefix + "_", prefix + "[")) for j in p.stdout.split())


def task_python_pid(array_job: str, task: str) -> int | None:
    """The campaign worker process of one array task on this (only) node."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"submitit.core._submit" in cmd and f"SLURM_ARRAY_JOB_ID={array_job}".encode() in env \
                and f"SLURM_ARRAY_TASK_ID={task}".encode() in env and b"SLURM_STEP_ID=0" in env:
            return int(proc.name)
    return None


@pytest.mark.slow
def test_slurm_infer_and_campaign_array_with_faults_resume_and_preemption(slurm_cluster, campaign_archive,
                                                                          model,
                                                                         tmp_path):
    # one scene, two MPI ranks, through slurm/infer.sh
    p = run_cli("infer", "--date", "2024-06-01T12:00", "--archive", campaign_archive, "--out",
                tmp_path / "infer",
                "--executor", "slurm", "--cluster", "localslurm", "--ranks", "2", "--log",
                tmp_path / "infer.log", *infer_sets(model))
    assert p.returncode == 0, p.stderr[-2000:]
    job = json.loads(p.stdout)["job"]
    assert wait_for(lambda: sacct_states(job).get(job) in ("COMPLETED", "FAILED", "CANCELLED"), timeout=600)
    log = (tmp_path / "infer.log").read_text()
    assert sacct_states(job)[job] == "COMPLETED", log[-3000:]
    assert '"ranks": 2' in log
    verify_output(next((tmp_path / "infer").glob("*.nc")))

    # eight scenes as a job array (4 tasks, %2), one task scancelled and one worker killed mid-write
    root, name = tmp_path / "campaigns", "array"
    p = run_cli("campaign", "--name", name, "--root", root, "--start", "2024-06-01T11:00", "--end",
                "2024-06-01T12:45", "--archive", campaign_archive, "--executor", "slurm", "--cluster",
                "localslurm", "--workers", "4", *infer_sets(model))
    assert p.returncode == 0, p.stderr[-2000:]
    jobs = json.loads(p.stdout.strip().splitlines()[-1])["jobs"]
    array = jobs[0].split("_")[0]
    hit = wait_for(lambda: running_claim_with_part(root, name), timeout=600, every=0.05)
    assert hit, "no task reached the write phase"
    subprocess.run(["scancel", parse_owner(hit[1])["job"]], check=True)  # scancel that array task mid-run
    other = wait_for(lambda: next((o for _, o in [running_claim_with_part(root, name) or (None, None)]
                                   if o and o != hit[1]), None), timeout=60, every=0.05)
    killed = []
    if other:  # kill -9 another task's worker mid-write
        pid = task_python_pid(array, parse_owner(other)["job"].rsplit("_", 1)[1])
        if pid:
            os.kill(pid, signal.SIGKILL)
            killed.append(other)
    assert wait_for(lambda: queue_empty(array), timeout=900), "array did not finish"
    states = sacct_states(array)
    assert "CANCELLED" in " ".join(states.values()) and len(states) == 4, states
    # resume: whatever the dead tasks held (the live ones may already have taken it back) is redone
    p = run_cli("campaign", "resume", name, "--root", root, "--executor", "slurm", "--cluster", "localslurm",
                "--workers", "2")
    assert p.returncode == 0, p.stderr[-2000:]
    array2 = json.loads(p.stdout.strip().splitlines()[-1])["jobs"][0].split("_")[0]
    assert wait_for(lambda: queue_empty(array2), timeout=900), "resume array did not finish"
    # the scancelled task gave its scene back uncounted; the killed one's attempt is lost (it counts)
    check_complete(root, name, SLOTS, lost_owners=killed, stopped_owners=[hit[1]])
    table = run_cli("status", name, "--root", root).stdout
    assert "done 8" in table and "pending 0" in table and "running 0" in table, table

    # the same workers started directly with sbatch slurm/campaign.sh (campaign created with --workers 0)
    p = run_cli("campaign", "--name", "direct", "--root", root, "--start", "2024-06-01T12:00", "--end",
                "2024-06-01T12:15", "--archive", campaign_archive, "--workers", "0", *infer_sets(model))
    assert p.returncode == 0 and "slurm/campaign.sh" in p.stdout, p.stderr[-2000:]
    job = subprocess.run(["sbatch", "--parsable", "--array=0-1", f"--output={tmp_path}/direct-%A_%a.out",
                          str(Path(__file__).resolve().parents[1] / "slurm" / "campaign.sh"),
                          str(root / "direct")],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert wait_for(lambda: queue_empty(job), timeout=600), "slurm/campaign.sh array did not finish"
    assert set(sacct_states(job).values()) == {"COMPLETED"}, sacct_states(job)
    check_complete(root, "direct", SLOTS[4:6])

    # preemption: a task gets the signal Submitit receives before a timeout/preemption while it
    # writes; it checkpoints, requeues itself, takes back its claim and finishes the campaign
    name = "preempt"
    p = run_cli("campaign", "--name", name, "--root", root, "--start", "2024-06-01T11:00", "--end",
                "2024-06-01T11:45", "--archive", campaign_archive, "--executor", "slurm", "--cluster",
                "localslurm", "--workers", "1", *infer_sets(model))
    assert p.returncode == 0, p.stderr[-2000:]
    job = json.loads(p.stdout.strip().splitlines()[-1])["jobs"][0]
    pre = wait_for(lambda: (lambda h: h if h and h[0] != SLOTS[3] else None)(
                       running_claim_with_part(root, name)),
                   timeout=600, every=0.05)  # not the last scene: the signal must find work in progress
    assert pre, "the worker never reached the write phase"
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    assert wait_for(lambda: queue_empty(job), timeout=900), "the preempted job did not finish"
    check_complete(root, name, SLOTS[:4], stopped_owners=[pre[1]])
    history = subprocess.run(["sacct", "-n", "-X", "-P", "-D", "-j", job, "-o", "State"], capture_output=True,
                             text=True).stdout.split()
    assert "REQUEUED" in history and history[-1] == "COMPLETED", history

"""The slurm/*.sh scripts at a real site (issue 12): found from anywhere, the site's python, --mem,
the campaign array sized by the submitter; jobs/*.yaml validated and driving what is submitted."""
import json
import os
import re
import shlex
import subprocess
import time

import pytest
import yaml

from cloudsr_hpc.errors import ConfigError
from cloudsr_hpc.orchestration import executors as ex
from cloudsr_hpc.schema import ClusterProfile
from tests.conftest import ROOT, make_export, run_cli, wait_for

SCRIPTS = ("train_stage1.sh", "train_stage2.sh", "infer.sh", "campaign.sh")  # what sbatch submits
VENV_PY = str(ROOT / ".venv" / "bin" / "python")


# ------------------------------------------------------------------------------- no cluster needed
def _job_file(tmp_path, which, change=None, **more):
    data = yaml.safe_load((ROOT / "jobs" / f"{which}.yaml").read_text())
    for key, value in {**(change or {}), **more}.items():
        if "." in key:
            outer, inner = key.split(".")
            data[outer][inner] = value
        else:
            data[key] = value
    path = tmp_path / f"{which}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("kind,change,needles", [
    ("train", {"inputz": ["x"]}, ["inputz: unknown key"]),
    ("infer", {"resources.mem_gb": 8}, ["resources.mem_gb: unknown key", "mem_gb_per_task"]),
    ("campaign", {"signal": "USR2 at 90"}, ["signal", "USR2 at 90"]),
    ("infer", {"script": "slurm/nosuch.sh"}, ["script", "nosuch.sh: no such file"]),
    ("infer", {"script": "/bin/sh"}, ["script", "expected slurm/NAME.sh"]),
    ("infer", {"script": "slurm/train_stage{stage}.sh"}, ["script", "placeholder"]),
    ("infer", {"kind": "campaign"}, ["kind: 'campaign'", "'infer' job definition"]),
    ("infer", {"array_parallelism": 4}, ["array_parallelism", "only a campaign"]),
    ("train", {"resources.ntasks_per_node": 0}, ["resources", "ntasks_per_node"]),
    ("infer", {"requeue": "sometimes"}, ["requeue"]),
])
def test_a_bad_job_definition_is_refused_naming_the_key(tmp_path, kind, change, needles):
    with pytest.raises(ConfigError) as e:
        ex.load_job(kind, _job_file(tmp_path, kind, change))
    for needle in needles:
        assert needle in str(e.value), (needle, str(e.value))


def test_every_job_field_drives_what_is_submitted(tmp_path, capsys):
    for kind in ("train", "infer", "campaign"):
        ex.load_job(kind)  # the shipped definitions load
    job = ex.load_job("infer", _job_file(tmp_path, "infer", requeue=False, signal="USR1@300",
                                         **{"resources.mem_gb_per_task": 3, "resources.time_minutes": 95}))
    args = ex.sbatch_args(job, ClusterProfile(), ntasks=5)
    assert {"--no-requeue", "--signal=USR1@300", "--ntasks-per-node=5", "--mem=15G", "--time=01:35:00"} \
        <= set(args), args  # --mem = memory per task x tasks per node
    assert "--mem=200G" in ex.sbatch_args(job, ClusterProfile(mem_gb=200), ntasks=5)  # profile: per node
    assert "--requeue" in ex.sbatch_args(ex.load_job("infer"), ClusterProfile())
    train = ex.load_job("train")
    assert "--time=02:00:00" in ex.sbatch_args(train, ClusterProfile())  # no profile: the job's time
    # script: submitted by its absolute path; inputs/outputs: shown by the dry run
    env = dict(os.environ, CLOUDSR_SETUP="module load x; conda activate y", CONFIG="/c/stage2.yaml")
    assert ex.sbatch(train, ["--nodes=1"], ["--set", "a=1"], env=env, dry_run=True, stage="2") is None
    out = capsys.readouterr().out
    script = str(ROOT / "slurm" / "train_stage2.sh")
    assert shlex.split(out.splitlines()[0]) == ["sbatch", "--nodes=1", script, "--set", "a=1"]
    assert shlex.split(out.splitlines()[1]) == ["#", "job", "environment:",
                                                "CLOUDSR_SETUP=module load x; conda activate y",
                                                "CONFIG=/c/stage2.yaml"]
    assert shlex.split(ex.sbatch_command(train, [], [], env, "1"))[:3] == [
        "CLOUDSR_SETUP=module load x; conda activate y", "CONFIG=/c/stage2.yaml", "sbatch"]
    for item in train.inputs:
        assert f"# needs: {item}" in out
    for item in train.outputs:
        assert f"# leaves: {item}" in out


def test_the_campaign_array_follows_the_scenes_and_the_throttle():
    job = ex.load_job("campaign")
    assert ex.campaign_array(job, ClusterProfile(array_parallelism=2), 4, todo=8) == (4, 2)
    assert ex.campaign_array(job, ClusterProfile(array_parallelism=2), 4, todo=3) == (3, 2)
    assert ex.campaign_array(job, ClusterProfile(), None, todo=5) == (5, 5)  # job's 8, at most N
    assert ex.campaign_array(job, ClusterProfile(), None, todo=50) == (50, job.array_parallelism)
    assert ex.campaign_array(job, ClusterProfile(), 3, todo=0) == (1, 1)  # one task reconciles, exits


def _preamble(text: str) -> str:
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("# find the checkout"))
    end = next(i for i, ln in enumerate(lines) if ln.startswith('source "$_r/slurm/env.sh"'))
    return "\n".join(lines[start:end + 1])


def test_scripts_share_one_preamble_and_ask_for_memory():
    texts = {s: (ROOT / "slurm" / s).read_text() for s in SCRIPTS}
    assert len({_preamble(t) for t in texts.values()}) == 1  # the same lines everywhere, then slurm/env.sh
    for name, text in texts.items():
        assert re.search(r"^#SBATCH --mem=\d+G$", text, re.M), name
        assert ".venv" not in text and "SLURM_SUBMIT_DIR:-$PWD" not in text, name
    assert "#SBATCH --array" not in texts["campaign.sh"]  # the submitter sizes the array


# ------------------------------------------------------------------------------------ real Slurm
def _sbatch(*args, cwd, env=None):
    p = subprocess.run(["sbatch", "--parsable", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                       timeout=60, env=env)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip().split(";")[0]


def _state(job: str) -> str:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job, "-o", "State"], capture_output=True,
                         text=True).stdout.split()
    return out[-1] if out else ""


def _done(job: str) -> bool:
    return _state(job) in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY")


def _site_env(**extra) -> dict:
    """The environment of a user at a site: no CLOUDSR_ROOT, the project's venv not on PATH."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("CLOUDSR_ROOT", "PYTHON", "VIRTUAL_ENV", "PYTHONPATH", "CLOUDSR_SETUP")}
    env["PATH"] = ":".join(p for p in env["PATH"].split(":") if ".venv" not in p)
    return dict(env, **extra)


@pytest.mark.slow
def test_a_script_submitted_by_path_from_elsewhere_finds_the_checkout_and_the_sites_python(slurm_cluster,
                                                                                           tmp_path):
    # a site environment (what 'module load' / 'conda activate' would do): CLOUDSR_SETUP puts a
    # python first on PATH; it leaves a mark, then runs the real interpreter
    site = tmp_path / "site-env" / "bin"
    site.mkdir(parents=True)
    marker = tmp_path / "marker"
    (site / "python").write_text(f'#!/bin/sh\necho "$*" >> {marker}\nexec {VENV_PY} "$@"\n')
    # a system python without the project's dependencies: not taken, the checkout's .venv instead
    bare = tmp_path / "bare-env" / "bin"
    bare.mkdir(parents=True)
    (bare / "python").symlink_to("/usr/bin/python3")
    (site / "python").chmod(0o755)
    elsewhere = tmp_path / "elsewhere"  # the submit directory: not the checkout
    elsewhere.mkdir()
    jobs = {}
    for name, bindir in (("site", site), ("bare", bare)):
        env = _site_env(CLOUDSR_SETUP=f'export PATH="{bindir}:$PATH"')
        jobs[name] = _sbatch("--ntasks-per-node=1", f"--output={tmp_path / name}.out",
                             ROOT / "slurm" / "train_stage1.sh", "--help", cwd=elsewhere, env=env)
    assert wait_for(lambda: all(_done(j) for j in jobs.values()), timeout=300)
    for name, job in jobs.items():
        log = (tmp_path / f"{name}.out").read_text()
        assert _state(job) == "COMPLETED", log[-3000:]
        assert f"cloudsr-hpc: checkout {ROOT}," in log and "usage: python -m cloudsr_hpc.train" in log, log
    assert f"python {site / 'python'}" in (tmp_path / "site.out").read_text()
    assert "cloudsr_hpc.train --config configs/stage1.yaml --help" in marker.read_text()  # the rank ran it
    assert f"python {VENV_PY}" in (tmp_path / "bare.out").read_text()
    # a wrong CLOUDSR_ROOT is an error, never another checkout
    job = _sbatch(f"--output={tmp_path}/wrong.out", ROOT / "slurm" / "infer.sh", "--help", cwd=elsewhere,
                  env=_site_env(CLOUDSR_ROOT=str(tmp_path)))
    assert wait_for(lambda: _done(job), timeout=120) and _state(job) == "FAILED"
    assert "is not a CloudSR-HPC checkout" in (tmp_path / "wrong.out").read_text()


@pytest.mark.slow
def test_campaign_script_turns_the_time_limit_signal_into_a_clean_stop_and_a_requeue(slurm_cluster,
                                                                                     tmp_path):
    # a stand-in worker (PYTHON): waits for SIGTERM the first time, finds nothing to do the second
    marker, cdir = tmp_path / "worker.log", tmp_path / "campaign"
    cdir.mkdir()
    fake = tmp_path / "fake-python"
    fake.write_text(f'#!/bin/bash\nif [ -e {marker} ]; then echo "again $*" >> {marker}; exit 0; fi\n'
                    f"trap 'echo stopped by TERM >> {marker}; exit 0' TERM\n"
                    f'echo "start $*" >> {marker}\nsleep 300 & wait\n')
    fake.chmod(0o755)
    log = tmp_path / "campaign.out"
    job = _sbatch(f"--output={log}", ROOT / "slurm" / "campaign.sh", "campaign", cwd=tmp_path,
                  env=_site_env(PYTHON=str(fake)))  # the campaign directory relative to the submit dir
    assert wait_for(lambda: marker.exists(), timeout=120), log.read_text() if log.exists() else ""
    time.sleep(1)
    subprocess.run(["scancel", "--batch", "--signal=USR2", job], check=True)  # what B:USR2@90 sends
    assert wait_for(lambda: _state(job) == "COMPLETED", timeout=180), log.read_text()
    assert marker.read_text().splitlines() == [
        f"start -m cloudsr_hpc.orchestration.worker {cdir}", "stopped by TERM",
        f"again -m cloudsr_hpc.orchestration.worker {cdir}"]
    text = log.read_text()
    assert f"requeueing task {job}" in text and "restart 1" in text, text


@pytest.fixture(scope="module")
def small_campaign_inputs(tmp_path_factory):
    from tests.test_hostile_input import seviri_files
    root = tmp_path_factory.mktemp("scripts")
    archive = root / "archive"
    archive.mkdir()
    seviri_files(archive, [__import__("datetime").datetime(2024, 6, 1, 11, 15 * i) for i in range(3)])
    model = make_export(root / "reg", stage="regression", base=8, mult=(1, 2))
    sets = [a for s in ("stages=regression", f"regression_checkpoint={model}", "quicklook=false")
            for a in ("--set", s)]
    return archive, sets


@pytest.mark.slow
def test_the_campaign_array_and_memory_are_computed_and_slurm_takes_them(slurm_cluster, small_campaign_inputs,
                                                                         tmp_path):
    archive, sets = small_campaign_inputs
    common = ["--root", tmp_path / "c", "--start", "2024-06-01T11:00", "--end", "2024-06-01T11:45",
              "--archive", archive, "--cluster", "localslurm", *sets]  # 4 slots, 3 with input
    # Submitit's array (dry run): 5 workers asked, 3 scenes to do, %2 from the profile
    p = run_cli("campaign", "--name", "dry", "--executor", "slurm", "--workers", "5", "--dry-run", *common)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "--array=0-2%2" in p.stdout and "#SBATCH --mem=4GB" in p.stdout
    assert "signal_delay_s = 90" in p.stdout
    assert "# needs: <campaign>/ledger.sqlite" in p.stdout
    assert "#SBATCH --requeue" in p.stdout and "#SBATCH --signal=USR2@90" in p.stdout
    # requeue: false reaches Submitit too
    job = ex.load_job("campaign", _job_file(tmp_path, "campaign", requeue=False, signal="USR2@200"))
    sub = ex.campaign_executor(tmp_path / "c" / "x", "slurm", job, ClusterProfile(), 2)._executor
    text = sub._make_submission_file_text(sub._submitit_command_str, "UID")
    assert sub.max_num_timeout == 0 and "#SBATCH --no-requeue" in text and "--signal=USR2@200" in text
    # the plain sbatch command of slurm/campaign.sh: the same array, --mem, by absolute path
    p = run_cli("campaign", "--name", "plain", "--workers", "0", *common)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.splitlines()[-1])
    argv = shlex.split(out["start_with"])
    assert argv[0] == "sbatch" and argv[-2:] == [str(ROOT / "slurm" / "campaign.sh"), out["campaign"]]
    assert {"--array=0-2%2", "--mem=4G", "--signal=B:USR2@90", "--requeue", "--partition=debug"} <= set(argv)
    # Slurm accepts it as is, and reads the options we mean (held, then cancelled: nothing runs)
    job = _sbatch("--hold", *argv[1:], cwd=tmp_path)
    try:
        show = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
        assert "ArrayTaskId=0-2%2" in show and "MinMemoryNode=4G" in show and "Requeue=1" in show, show
    finally:
        subprocess.run(["scancel", job], check=False)

"""Turning job definitions into running jobs: sbatch for the scripts, Submitit for campaign workers.

* Resources come from ``jobs/<kind>.yaml``, overridden by the cluster profile
  (``configs/cluster/<name>.yaml``: partition, account, QoS, GPUs, time, set-up lines) and then by
  the command line.
* ``slurm``: training and inference are the ``slurm/*.sh`` scripts, submitted with ``sbatch``
  (argument lists, never a shell string); campaigns are Submitit job arrays of
  :class:`CampaignWorker` (checkpointable: a preempted or timed-out task requeues and takes its
  claims back) throttled with ``%``.  ``--dry-run`` prints the exact sbatch command or the
  Submitit parameters and the batch script it would submit, and submits nothing.
* ``local``: the same work as local processes (Submitit's LocalExecutor for campaign workers);
  ``debug``: in this process, one worker after the other.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import submitit

from ..config import PACKAGE_ROOT, build, config_path, load, read_yaml
from ..errors import CloudSRError, ConfigError
from ..schema import ClusterProfile, JobDef

log = logging.getLogger(__name__)
PROJECT_ROOT = PACKAGE_ROOT.parent
JOBS_DIR = PROJECT_ROOT / "jobs"


def default_executor() -> str:
    """Slurm when a controller answers (``scontrol ping``), else local -- said once, on stderr's
    log: ``sbatch`` on PATH alone (a login node image, a stopped cluster) is not a cluster."""
    if not shutil.which("sbatch"):
        return "local"
    try:
        p = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=15)
        up = p.returncode == 0 and "UP" in p.stdout
    except (OSError, subprocess.TimeoutExpired):
        up = False
    if not up:
        log.warning("sbatch is on PATH but no Slurm controller answers (scontrol ping): running locally "
                    "(--executor slurm to insist)")
    return "slurm" if up else "local"


def load_job(kind: str) -> JobDef:
    path = JOBS_DIR / f"{kind}.yaml"
    if not path.exists():
        raise ConfigError(f"{path}: job definition missing")
    return build(JobDef, read_yaml(path), str(path))


def load_profile(name: str | None) -> ClusterProfile:
    """``configs/cluster/<name>.yaml`` (a path works too); None: the built-in defaults."""
    if not name:
        return ClusterProfile()
    p = Path(name)
    if not p.exists():
        p = Path("cluster") / f"{name}.yaml"
        try:
            config_path(p)
        except ConfigError:
            known = sorted(f.stem for f in (PROJECT_ROOT / "configs" / "cluster").glob("*.yaml"))
            raise ConfigError(f"--cluster {name}: unknown cluster profile "
                              f"(known: {', '.join(known)})") from None
    return load(ClusterProfile, p, [])


def sbatch_args(job: JobDef, profile: ClusterProfile, *, ntasks: int | None = None, nodes: int | None = None,
                gpus_per_node: int | None = None, time_minutes: int | None = None, after: str | None = None,
                log_file: str | None = None, name: str | None = None, array: str | None = None) -> list[str]:
    """``sbatch`` options for a job: definition < profile < command line."""
    r = job.resources
    gpus = gpus_per_node if gpus_per_node is not None else (profile.gpus_per_node or r.gpus_per_node)
    minutes = time_minutes or profile.time_minutes or r.time_minutes
    args = ["--parsable", f"--nodes={nodes or r.nodes}",
            f"--cpus-per-task={profile.cpus_per_task or r.cpus_per_task}",
            f"--time={minutes // 60:02d}:{minutes % 60:02d}:00"]
    if ntasks:
        args.append(f"--ntasks-per-node={-(-ntasks // (nodes or r.nodes))}")
    else:
        args.append(f"--ntasks-per-node={gpus or r.ntasks_per_node}")
    for flag, value in (("--partition", profile.partition), ("--account", profile.account),
                        ("--qos", profile.qos),
                        ("--job-name", name), ("--output", log_file), ("--array", array)):
        if value:
            args.append(f"{flag}={value}")
    if gpus:
        args.append(f"--gpus-per-node={gpus}")
    if profile.mem_gb or r.mem_gb:
        args.append(f"--mem={profile.mem_gb or r.mem_gb}G")
    if after:
        args.append(f"--dependency=afterok:{after}")
    return args


def sbatch(script: str | Path, options: list[str], script_args: list[str], env: dict | None = None,
           dry_run: bool = False) -> str | None:
    """Submit a batch script; returns the job id (None on a dry run, which prints the command)."""
    cmd = ["sbatch", *options, str(PROJECT_ROOT / script), *script_args]
    if dry_run:
        print(" ".join(_quote(c) for c in cmd))
        print(f"# --- {script} ---")
        print((PROJECT_ROOT / script).read_text())
        return None
    if not shutil.which("sbatch"):
        raise CloudSRError("sbatch: not found (no Slurm here): use --executor local")
    p = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, env=env, timeout=120)
    if p.returncode != 0:
        raise CloudSRError(f"sbatch {script}: {p.stderr.strip() or p.stdout.strip()}")
    return p.stdout.strip().split(";")[0]


def _quote(s: str) -> str:
    import shlex
    return shlex.quote(s)


def setup_env(profile: ClusterProfile) -> dict | None:
    """The profile's set-up lines travel to the scripts as CLOUDSR_SETUP (sourced on the node)."""
    import os
    if not profile.setup:
        return None
    return dict(os.environ, CLOUDSR_SETUP="; ".join(profile.setup))


# ----------------------------------------------------------------------------- campaign workers
class CampaignWorker(submitit.helpers.Checkpointable):
    """A Submitit callable: process campaign scenes until none is left.  On preemption or timeout
    Submitit calls :meth:`checkpoint` and requeues the same task; all state is in the ledger, and
    the requeued task takes back the claims it held."""

    def __call__(self, cdir: str) -> dict:
        from ..cli import setup_logging
        from .campaign import work
        setup_logging()
        return work(cdir)

    def checkpoint(self, cdir: str):
        """Submitit's timeout/preemption signal, just before it requeues this task: give the scene
        in hand back uncounted (preempted), then resubmit the same call."""
        from .campaign import give_back_own
        try:
            give_back_own(cdir, why="requeued by Submitit (time limit or preemption)")
        except Exception as e:  # noqa: BLE001 - the requeue must happen even if the ledger is busy
            log.warning("could not give the claim back before the requeue: %s", e)
        return super().checkpoint(cdir)


def campaign_executor(cdir: Path, kind: str, job: JobDef, profile: ClusterProfile, workers: int,
                      after: str | None = None) -> submitit.AutoExecutor:
    ex = submitit.AutoExecutor(folder=cdir / "logs" / "%j", cluster=kind)
    r = job.resources
    params = {"name": f"cloudsr-campaign-{cdir.name}", "timeout_min": profile.time_minutes or r.time_minutes,
              "cpus_per_task": profile.cpus_per_task or r.cpus_per_task, "tasks_per_node": 1, "nodes": 1}
    if kind == "slurm":
        extra = {k: v for k, v in (("account", profile.account), ("qos", profile.qos)) if v}
        if after:
            extra["dependency"] = f"afterok:{after}"
        params.update(slurm_partition=profile.partition or None, slurm_additional_parameters=extra,
                      slurm_array_parallelism=min(workers, profile.array_parallelism or job.array_parallelism
                                                  or workers),
                      slurm_setup=list(profile.setup), slurm_signal_delay_s=90)
        if profile.gpus_per_node:
            params["gpus_per_node"] = 1  # one GPU per worker
        if profile.mem_gb or r.mem_gb:
            params["mem_gb"] = profile.mem_gb or r.mem_gb
        params = {k: v for k, v in params.items() if v is not None}
    ex.update_parameters(**params)
    return ex


@contextmanager
def _stdio_to_devnull(active: bool):
    """Local workers (Submitit's controller) inherit our stdout/stderr; they log to their own
    files, and must not hold the caller's pipes open after the command returns."""
    if not active:
        yield
        return
    sys.stdout.flush(), sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1), os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved[0], 1), os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def submit_campaign(cdir: Path, kind: str, profile: ClusterProfile, workers: int, after: str | None = None,
                    dry_run: bool = False) -> list:
    """Start ``workers`` campaign workers; returns the Submitit jobs (none on a dry run)."""
    job = load_job("campaign")
    ex = campaign_executor(cdir, kind, job, profile, workers, after)
    if dry_run:
        print(f"# submitit {kind} executor, {workers} array task(s) of CampaignWorker({cdir})")
        for k, v in sorted(ex._executor.parameters.items()):
            print(f"#   {k} = {v}")
        if kind == "slurm":
            print("# Submitit adds: "
                  f"--array=0-{workers - 1}%{ex._executor.parameters.get('array_parallelism', workers)}")
            print(ex._executor._make_submission_file_text(ex._executor._submitit_command_str, "UID"))
        return []
    with _stdio_to_devnull(kind == "local"):
        jobs = ex.map_array(CampaignWorker(), [str(cdir)] * workers)
    from .ledger import Ledger
    ledger = Ledger(cdir / "ledger.sqlite")
    from .campaign import local_job_info
    for j in jobs:
        info = local_job_info(int(j.job_id)) if kind == "local" and str(j.job_id).isdigit() else ""
        ledger.add_job(str(j.job_id), kind, info)
    ledger.close()
    return jobs

"""Turning job definitions into running jobs: sbatch for the scripts, Submitit for campaign workers.

* ``jobs/<kind>.yaml`` says what is submitted: the script, the resources (nodes, tasks, CPUs, GPUs,
  memory, time), ``requeue`` and ``signal`` (sbatch options, overriding the script's ``#SBATCH``
  lines), a campaign's array throttle; its inputs and outputs are shown by ``--dry-run``.  It is
  validated on load (unknown keys, a bad signal, a missing script: one error naming the key).
  The cluster profile (``configs/cluster/<name>.yaml``: partition, account, QoS, GPUs and their
  binding, memory, time, set-up lines and exported variables) overrides the resources, and the
  command line overrides both.  GPU jobs run one rank per GPU: ``--ntasks-per-node`` = GPUs per
  node (a request for more ranks than GPUs is refused), ``--gpus-per-node`` or ``--gpus-per-task``,
  and ``--gpu-bind`` when the profile says.
* ``slurm``: training and inference are the ``slurm/*.sh`` scripts, submitted with ``sbatch``
  (argument lists, never a shell string; the profile's set-up lines travel as ``CLOUDSR_SETUP``);
  campaigns are Submitit job arrays of :class:`CampaignWorker` (checkpointable: a preempted or
  timed-out task requeues and takes its claims back), ``--array=0-(N-1)%P`` with N the workers (at
  most the scenes to do) and P the throttle; :func:`campaign_sbatch_command` is the same array as
  a ``sbatch slurm/campaign.sh`` command.  ``--dry-run`` prints the exact sbatch command or the
  Submitit parameters and the batch script it would submit, and submits nothing.
* ``local``: the same work as local processes (Submitit's LocalExecutor for campaign workers);
  ``debug``: in this process, one worker after the other.
"""
from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import submitit

from ..config import PACKAGE_ROOT, build, config_path, load, read_yaml
from ..core.devices import OVERSUBSCRIBE_VAR, oversubscribed
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


def load_job(kind: str, path: str | Path | None = None) -> JobDef:
    """``jobs/<kind>.yaml`` (or ``path``), validated: unknown or ill-typed keys, a bad signal, a
    kind that is not the file's or a script that does not exist are one error naming the key."""
    path = Path(path) if path else JOBS_DIR / f"{kind}.yaml"
    if not path.exists():
        raise ConfigError(f"{path}: job definition missing")
    job = build(JobDef, read_yaml(path), f"{path}: ")
    if job.kind != kind:
        raise ConfigError(f"{path}: kind: {job.kind!r}, but this is the {kind!r} job definition")
    for stage in ("1", "2") if kind == "train" else ("",):
        script = PROJECT_ROOT / job.script.format(stage=stage)
        if not script.is_file():
            raise ConfigError(f"{path}: script: {script}: no such file")
    return job


def job_script(job: JobDef, stage: str = "") -> Path:
    """The absolute path of the job's script (train: of ``stage``): sbatch records it, and the
    script finds the checkout from it wherever sbatch runs."""
    return PROJECT_ROOT / job.script.format(stage=stage)


def _mem_gb(job: JobDef, profile: ClusterProfile, tasks_per_node: int) -> int:
    """``--mem`` per node: the profile's, else the job's per-task memory times the tasks per node."""
    return profile.mem_gb or job.resources.mem_gb_per_task * tasks_per_node


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
    """``sbatch`` options for a job: definition < profile < command line.  They override the
    script's ``#SBATCH`` lines, so the job definition decides (resources, requeue, signal)."""
    r = job.resources
    gpus = gpus_per_node if gpus_per_node is not None else (profile.gpus_per_node or r.gpus_per_node)
    per_task = profile.gpus_per_task or 1  # GPUs per rank: one rank per GPU unless the profile says more
    minutes = time_minutes or profile.time_minutes or r.time_minutes
    args = ["--parsable", f"--nodes={nodes or r.nodes}",
            f"--cpus-per-task={profile.cpus_per_task or r.cpus_per_task}",
            f"--time={minutes // 60:02d}:{minutes % 60:02d}:00"]
    per_node = -(-ntasks // (nodes or r.nodes)) if ntasks else (max(1, gpus // per_task) if gpus
                                                               else r.ntasks_per_node)
    if gpus and not profile.gpus_per_task and per_node > gpus and not oversubscribed():
        raise ConfigError(f"{per_node} ranks per node but {gpus} GPUs per node: one rank per GPU (fewer "
                          f"--ranks, more --nodes or --gpus-per-node), or {OVERSUBSCRIBE_VAR}=1 to share "
                          f"GPUs")
    args.append(f"--ntasks-per-node={per_node}")
    if _mem_gb(job, profile, per_node):
        args.append(f"--mem={_mem_gb(job, profile, per_node)}G")
    args.append("--requeue" if job.requeue else "--no-requeue")
    if job.signal:
        args.append(f"--signal={job.signal}")
    for flag, value in (("--partition", profile.partition), ("--account", profile.account),
                        ("--qos", profile.qos),
                        ("--job-name", name), ("--output", log_file), ("--array", array)):
        if value:
            args.append(f"{flag}={value}")
    if gpus:
        # --gpus-per-task: Slurm gives each task its own; --gpu-bind: each task sees only its own
        args.append(f"--gpus-per-task={profile.gpus_per_task}" if profile.gpus_per_task
                    else f"--gpus-per-node={gpus}")
        if profile.gpu_bind:
            args.append(f"--gpu-bind={profile.gpu_bind}")
    if after:
        args.append(f"--dependency=afterok:{after}")
    return args


# what a submission sets in the job's environment, shown in front of a printed sbatch command
_JOB_ENV = ("CLOUDSR_SETUP", "CONFIG")


def _env_sets(env: dict | None) -> list[str]:
    return [f"{k}={shlex.quote(env[k])}" for k in _JOB_ENV if (env or {}).get(k)]


def sbatch_command(job: JobDef, options: list[str], script_args: list[str], env: dict | None = None,
                   stage: str = "") -> str:
    """The submission as one shell command line: the job's environment, then sbatch."""
    return " ".join([*_env_sets(env), shlex.join(["sbatch", *options, str(job_script(job, stage)),
                                                  *script_args])])


def sbatch(job: JobDef, options: list[str], script_args: list[str], env: dict | None = None,
           dry_run: bool = False, stage: str = "") -> str | None:
    """Submit the job's script (train: of ``stage``) by its absolute path; returns the job id (None
    on a dry run, which prints the command, what the job needs and leaves, and the script)."""
    script = job_script(job, stage)
    cmd = ["sbatch", *options, str(script), *script_args]
    if dry_run:
        print(shlex.join(cmd))
        if _env_sets(env):
            print(f"# job environment: {' '.join(_env_sets(env))}")
        for what, items in (("needs", job.inputs), ("leaves", job.outputs)):
            for item in items:
                print(f"# {what}: {item}")
        print(f"# --- {script.relative_to(PROJECT_ROOT)} ---")
        print(script.read_text())
        return None
    if not shutil.which("sbatch"):
        raise CloudSRError("sbatch: not found (no Slurm here): use --executor local")
    p = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, env=env, timeout=120)
    if p.returncode != 0:
        raise CloudSRError(f"sbatch {script.name}: {p.stderr.strip() or p.stdout.strip()}")
    return p.stdout.strip().split(";")[0]


def setup_lines(profile: ClusterProfile) -> list[str]:
    """The profile's set-up lines, then an ``export NAME=VALUE`` line per ``env`` entry (NCCL_*: after
    any module load, so the profile's values win)."""
    return [*profile.setup, *(f"export {k}={shlex.quote(str(v))}" for k, v in profile.env.items())]


def setup_env(profile: ClusterProfile) -> dict | None:
    """The profile's set-up lines (:func:`setup_lines`) travel to the scripts as CLOUDSR_SETUP
    (evaluated on the node by slurm/env.sh before it picks the python); None: the caller's
    environment as it is."""
    if not setup_lines(profile):
        return None
    return dict(os.environ, CLOUDSR_SETUP="; ".join(setup_lines(profile)))


# ----------------------------------------------------------------------------- campaign workers
class CampaignWorker(submitit.helpers.Checkpointable):
    """A Submitit callable: process campaign scenes until none is left.  On preemption or timeout
    Submitit calls :meth:`checkpoint` and requeues the same task; all state is in the ledger, and
    the requeued task takes back the claims it held."""

    def __call__(self, cdir: str) -> dict:
        from ..cli import setup_process
        from .campaign import work
        setup_process()
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


def campaign_array(job: JobDef, profile: ClusterProfile, workers: int | None,
                   todo: int | None = None) -> tuple[int, int]:
    """The workers' job array ``0-(N-1)%P``: N = ``workers`` (None: one per scene, at most
    MAX_WORKERS), at most the campaign's scenes to do (``todo``; at least one task, which reconciles
    and exits when nothing is left); P = the profile's ``array_parallelism``, else the job
    definition's, at most N."""
    from .campaign import MAX_WORKERS
    n = min(MAX_WORKERS if workers is None else workers, MAX_WORKERS if todo is None else todo)
    n = max(1, n)
    return n, min(n, profile.array_parallelism or job.array_parallelism or n)


def campaign_todo(cdir: Path) -> int | None:
    """Scenes a worker may still claim (pending or failed, not quarantined); None without a ledger."""
    from .ledger import Ledger
    if not (cdir / "ledger.sqlite").is_file():
        return None
    ledger = Ledger(cdir / "ledger.sqlite")
    try:
        counts = ledger.counts()
    finally:
        ledger.close()
    return counts["pending"] + counts["failed"]


def campaign_sbatch_command(cdir: Path, profile: ClusterProfile, todo: int | None = None,
                            workers: int | None = None, after: str | None = None) -> str:
    """``sbatch --array=0-(N-1)%P ... /abs/slurm/campaign.sh CDIR``: the campaign's workers as a
    plain sbatch command (what ``campaign --workers 0`` prints; N: one task per scene to do unless
    ``workers``), with the job definition's and the profile's options and the profile's set-up
    lines (``CLOUDSR_SETUP=...`` in front)."""
    job = load_job("campaign")
    n, p = campaign_array(job, profile, workers, campaign_todo(cdir) if todo is None else todo)
    opts = sbatch_args(job, profile, after=after, name=f"cloudsr-campaign-{cdir.name}",
                       gpus_per_node=1 if profile.gpus_per_node else 0,  # one worker (one GPU) per task
                       array=f"0-{n - 1}%{p}", log_file=str(cdir / "logs" / "campaign-%A_%a.out"))
    opts = [o for o in opts if o != "--parsable"]
    return sbatch_command(job, opts, [str(cdir)], setup_env(profile))


def _submitit_signal(job: JobDef) -> int:
    """The job definition's signal as Submitit takes it: its own preemption signal, a lead time."""
    from submitit.core.job_environment import JobEnvironment
    if not job.signal:
        return 90
    m = re.fullmatch(r"(?:[RB]{1,2}:)?(?:SIG)?(\w+)@(\d+)", job.signal)
    if not m or m[1] != JobEnvironment.USR_SIG:
        raise ConfigError(f"{JOBS_DIR / 'campaign.yaml'}: signal: {job.signal!r}: campaign workers "
                          f"(Submitit) stop on {JobEnvironment.USR_SIG}, e.g. B:{JobEnvironment.USR_SIG}@90")
    return int(m[2])


def campaign_executor(cdir: Path, kind: str, job: JobDef, profile: ClusterProfile, workers: int,
                      after: str | None = None) -> submitit.AutoExecutor:
    # requeue: false -> a timed-out task is not requeued by Submitit either
    no_requeue = {"slurm_max_num_timeout": 0} if kind == "slurm" and not job.requeue else {}
    ex = submitit.AutoExecutor(folder=cdir / "logs" / "%j", cluster=kind, **no_requeue)
    r = job.resources
    params = {"name": f"cloudsr-campaign-{cdir.name}", "timeout_min": profile.time_minutes or r.time_minutes,
              "cpus_per_task": profile.cpus_per_task or r.cpus_per_task, "tasks_per_node": 1, "nodes": 1}
    if kind == "slurm":
        extra = {k: v for k, v in (("account", profile.account), ("qos", profile.qos)) if v}
        if after:
            extra["dependency"] = f"afterok:{after}"
        extra["requeue" if job.requeue else "no_requeue"] = True
        params.update(slurm_partition=profile.partition or None, slurm_additional_parameters=extra,
                      slurm_array_parallelism=campaign_array(job, profile, workers)[1],
                      slurm_setup=setup_lines(profile), slurm_signal_delay_s=_submitit_signal(job))
        if profile.gpus_per_node:
            params["gpus_per_node"] = 1  # one GPU per worker
        if _mem_gb(job, profile, 1):
            params["mem_gb"] = _mem_gb(job, profile, 1)
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
                    dry_run: bool = False, todo: int | None = None) -> list:
    """Start ``workers`` campaign workers, at most one per scene to do (``todo``; default: the
    ledger's count); returns the Submitit jobs (none on a dry run)."""
    job = load_job("campaign")
    workers, parallel = campaign_array(job, profile, workers, campaign_todo(cdir) if todo is None else todo)
    ex = campaign_executor(cdir, kind, job, profile, workers, after)
    if dry_run:
        print(f"# submitit {kind} executor, {workers} array task(s) of CampaignWorker({cdir})")
        for what, items in (("needs", job.inputs), ("leaves", job.outputs)):
            for item in items:
                print(f"# {what}: {item}")
        for k, v in sorted(ex._executor.parameters.items()):
            print(f"#   {k} = {v}")
        if kind == "slurm":
            print(f"# Submitit adds: --array=0-{workers - 1}%{parallel}")
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

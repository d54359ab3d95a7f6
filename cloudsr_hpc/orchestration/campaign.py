"""Operational reprocessing campaigns: a date range of scenes, resumable, observable, nothing lost.

A campaign is a directory ``<root>/<name>/`` holding ``campaign.yaml`` (what to do: pair, range,
archive, inference settings, attempt limit), ``ledger.sqlite`` (:mod:`.ledger`), ``logs/`` and,
by default, ``output/``.  Workers (local processes or Slurm array tasks) each loop: claim a scene
atomically, super-resolve it (one rank per worker, whole scenes), record the result, until no
claimable scene is left.  A failing scene is recorded and retried later; after ``max_attempts``
failures it is quarantined with its error and never blocks the others.

The output files are the truth: :func:`reconcile` marks a scene done iff its output exists and
verifies, returns lost claims (killed workers, cancelled tasks) to the queue, and so a resume
only schedules what is missing.  Outputs appear only complete (atomic rename), so no scene is
ever half-done, and a scene done is never computed again.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import shlex
import signal
import socket
import sqlite3
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..config import build, check_ranges, dump_yaml, load, read_yaml
from ..core import signals
from ..errors import CloudSRError, ConfigError, InputError, Interrupted, one_line
from .ledger import Ledger

log = logging.getLogger(__name__)

# a name becomes a directory, a Slurm job name and part of printed commands: nothing a shell or
# a path could read as more than a name
NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
MAX_WORKERS = 1000  # Slurm's default MaxArraySize is 1001; far beyond what one ledger serves well
MAX_ATTEMPTS = 100
LEDGER = "ledger.sqlite"


@dataclass
class CampaignSpec:
    """``<campaign>/campaign.yaml``."""
    name: str
    pair: str = "seviri_viirs"
    start: str = ""
    end: str = ""
    every: str = "15min"
    archive: str = "runs/archive"
    out_dir: str = ""  # default: <campaign>/output
    infer_config: str = "infer.yaml"
    infer_set: list[str] = field(default_factory=list)  # --set overrides of the inference config
    max_attempts: int = 3
    workers: int = 2  # local processes or Slurm array tasks
    tolerance_minutes: float = 0.0  # 0: half the LR repeat cycle

    def validate(self, where):
        check_ranges(where, self, max_attempts=f"[1, {MAX_ATTEMPTS}]", workers=f"[1, {MAX_WORKERS}]",
                     tolerance_minutes=">= 0")
        check_name(self.name)


def check_name(name: str) -> str:
    """A campaign name: 1-64 of ``A-Za-z0-9._-``, not ``.`` or ``..`` (shown with repr: one line)."""
    if not isinstance(name, str) or not NAME.fullmatch(name) or name in (".", ".."):
        raise InputError(f"campaign name {name!r}: use 1-64 characters of A-Z a-z 0-9 . _ - "
                         "(not '.' or '..')")
    return name


def campaign_root(root: str | Path) -> Path:
    """The resolved root; control characters in it would end up in generated job scripts."""
    r = Path(root).resolve()
    if any(ord(c) < 32 or ord(c) == 127 for c in str(r)):
        raise InputError(f"--root {str(root)!r}: control characters in the path")
    return r


def campaign_dir(root: str | Path, name: str) -> Path:
    """``<root>/<name>``, confined to the root (a symlinked campaign directory may not lead out)."""
    r = campaign_root(root)
    cdir = r / check_name(name)
    if cdir.resolve().parent != r:
        raise InputError(f"{cdir}: resolves to {cdir.resolve()}, outside the campaign root {r}")
    return cdir


def existing(root: str | Path, name: str) -> Path:
    """The directory of a campaign that exists (status, resume, retry, cancel create nothing)."""
    cdir = campaign_dir(root, name)
    if not (cdir / "campaign.yaml").is_file():
        known = sorted(p.parent.name for p in cdir.parent.glob("*/campaign.yaml"))
        listed = ", ".join(known[:10]) + (", ..." if len(known) > 10 else "")
        raise InputError(f"{cdir.parent}: no campaign '{name}' (campaigns here: {listed or 'none'})")
    return cdir


def load_spec(cdir: Path) -> CampaignSpec:
    path = cdir / "campaign.yaml"
    if not path.exists():
        raise ConfigError(f"{cdir}: no campaign here (campaign.yaml missing)")
    return build(CampaignSpec, read_yaml(path), str(path))


@contextmanager
def ledger_errors(cdir: Path):
    """sqlite3 failures past :func:`open_ledger`'s checks (locked beyond the timeout, I/O errors)
    as one line naming the ledger."""
    try:
        yield
    except sqlite3.Error as e:
        raise InputError(f"{cdir / LEDGER}: ledger error ({one_line(e)})") from None


def open_ledger(cdir: Path) -> Ledger:
    """The campaign's ledger, checked first: a missing, empty, truncated or corrupt file is one
    line naming it (never a new empty ledger that reads as a finished campaign, never a sqlite3
    traceback); ``campaign rebuild`` makes it anew from the spec and the outputs."""
    path = cdir / LEDGER
    hint = ("rebuild it from campaign.yaml and the outputs: python -m cloudsr_hpc.submit campaign rebuild "
            f"{shlex.quote(cdir.name)} --root {shlex.quote(str(cdir.parent))}")
    if not path.is_file() or path.stat().st_size == 0:
        raise InputError(f"{path}: ledger {'empty' if path.is_file() else 'missing'}; {hint}")
    try:
        db = sqlite3.connect(path, timeout=120.0)
        try:
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            scenes = db.execute("SELECT COUNT(*) FROM scenes").fetchone()[0] if "scenes" in tables else 0
        finally:
            db.close()
    except sqlite3.OperationalError as e:  # locked beyond the timeout, no permission: not a broken file
        raise InputError(f"{path}: ledger not readable now ({one_line(e)})") from None
    except sqlite3.DatabaseError as e:  # "file is not a database", "database disk image is malformed"
        raise InputError(f"{path}: ledger unreadable ({one_line(e)}); {hint}") from None
    if check != "ok" or not {"scenes", "attempts", "jobs"} <= tables or not scenes:
        why = (f"integrity check: {one_line(check)[:200]}" if check != "ok"
               else "its tables or scenes are gone")
        raise InputError(f"{path}: ledger corrupt ({why}); {hint}")
    return Ledger(path)


def output_dir(cdir: Path, spec: CampaignSpec) -> Path:
    return Path(spec.out_dir).resolve() if spec.out_dir else cdir / "output"


def infer_config(spec: CampaignSpec):
    from ..schema import InferConfig
    return load(InferConfig, spec.infer_config, [f"pair={spec.pair}", *spec.infer_set])


def scene_rows(cdir: Path, spec: CampaignSpec, registry, counts: dict):
    """Check what a campaign needs (dates, range, archive, pair, checkpoints) now, and return an
    iterator of its (slot, input files, output path) rows, made one at a time: a long range never
    sits in memory, and one beyond :data:`~cloudsr_hpc.data.index.MAX_SLOTS` is refused before
    any is made.  ``counts`` gets ``scenes`` and, as rows are made, ``missing`` (no input)."""
    from ..data.index import ArchiveIndex, count_slots, parse_date, parse_every
    from ..inference.pipeline import checkpoints_for, output_name
    start, end, every = parse_date(spec.start), parse_date(spec.end or spec.start), parse_every(spec.every)
    if end < start:
        raise CloudSRError(f"--end {spec.end} is before --start {spec.start}")
    counts.update(scenes=count_slots(start, end, every), missing=0)
    pair = registry.pair(spec.pair)
    cfg = infer_config(spec)
    for ck in checkpoints_for(cfg):
        if not Path(ck).exists():
            raise ConfigError(f"{ck}: checkpoint does not exist (stages '{cfg.stages}'; set it with --set)")
    tol = dt.timedelta(minutes=spec.tolerance_minutes) if spec.tolerance_minutes else None
    find = ArchiveIndex(spec.archive, registry).finder(pair.lr, pair.lr_formats, tol)
    out = output_dir(cdir, spec)

    def rows():
        for i in range(counts["scenes"]):
            t = start + i * every
            try:
                files = [str(f) for f in find(t).files]
            except CloudSRError:
                files = []
                counts["missing"] += 1
            yield t.isoformat(), files, str(out / output_name(pair.name, cfg.stages, t, cfg.members))
    return rows()


def _fill(ledger: Ledger, rows, batch: int = 10_000) -> None:
    """Rows into the ledger a batch at a time (memory bounded; a re-run adds what is not there)."""
    chunk = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == batch:
            ledger.add_scenes(chunk)
            chunk = []
    if chunk:
        ledger.add_scenes(chunk)


def create(root: str | Path, spec: CampaignSpec, registry, dry_run: bool = False) -> tuple[Path, int, int]:
    """Write the campaign directory and its ledger; returns (dir, scenes, missing).  Everything is
    checked before anything is written: name, dates, range, archive, pair, checkpoints.  ``dry_run``
    checks and counts, and writes nothing."""
    spec.validate("campaign")
    cdir = campaign_dir(root, spec.name)
    counts: dict = {}
    rows = scene_rows(cdir, spec, registry, counts)
    spec_path = cdir / "campaign.yaml"
    if dry_run:
        for _ in rows:
            pass
        return cdir, counts["scenes"], counts["missing"]
    (cdir / "logs").mkdir(parents=True, exist_ok=True)
    if spec_path.exists():
        old = load_spec(cdir)
        if (old.start, old.end, old.every, old.pair) != (spec.start, spec.end, spec.every, spec.pair):
            raise ConfigError(f"{spec_path}: campaign '{spec.name}' exists with another range; "
                              f"use 'campaign resume {spec.name}' or another --name")
        ledger = open_ledger(cdir)  # an existing campaign's lost ledger is rebuilt, not started afresh
    else:
        spec_path.write_text(dump_yaml(spec))
        ledger = Ledger(cdir / LEDGER)
    try:
        _fill(ledger, rows)
    finally:
        ledger.close()
    return cdir, counts["scenes"], counts["missing"]


def rebuild(cdir: Path, registry) -> dict:
    """A new ledger from ``campaign.yaml`` and the outputs on disk (the truth): every slot pending
    (or missing), then :func:`reconcile` marks done exactly the outputs that fully verify.  The broken
    file is kept beside it (``ledger.sqlite.broken-<time>``); its attempt history is not carried
    over.  Stop the campaign's workers first.  Returns reconcile's changes plus ``scenes``."""
    spec = load_spec(cdir)
    counts: dict = {}
    rows = scene_rows(cdir, spec, registry, counts)
    path = cdir / LEDGER
    stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    for suffix in ("", "-journal", "-wal", "-shm"):  # a stale journal must not be replayed into the new file
        old = cdir / (LEDGER + suffix)
        if old.exists():
            os.replace(old, cdir / f"{LEDGER}.broken-{stamp}{suffix}")
    tmp = cdir / f".{LEDGER}.rebuild"
    tmp.unlink(missing_ok=True)
    ledger = Ledger(tmp)
    try:
        _fill(ledger, rows)
        ledger.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        ledger.close()
    os.replace(tmp, path)  # complete or absent: a crash mid-way leaves no half ledger in place
    changed = reconcile(cdir, full=True)  # nothing vouches for these outputs now: decode every chunk
    return {**changed, "scenes": counts["scenes"]}


def retry(cdir: Path, states: tuple[str, ...]) -> list[str]:
    """Scenes in ``states`` (quarantined and/or failed) back to pending with a fresh attempt budget,
    e.g. after the cause was fixed; their past attempts stay in the ledger."""
    ledger = open_ledger(cdir)
    try:
        return ledger.retry(states)
    finally:
        ledger.close()


# ----------------------------------------------------------------------------- liveness
def owner_here() -> str:
    """Who is working, unique across nodes, processes and time:
    ``slurm:<job>[_<task>]/<step>.<procid>@<host>:<pid>:<start>`` under Slurm (workers of one
    allocation -- ``srun -n 2``, two steps, local workers inside ``salloc`` -- differ by step,
    procid or pid), ``local:<host>:<pid>:<start>`` elsewhere; ``start`` is the kernel's start time
    of the process, so a reused pid is never taken for the worker that held it."""
    host, pid = socket.gethostname(), os.getpid()
    where = f"{host}:{pid}:{process_start(pid) or 0}"
    if "SLURM_JOB_ID" in os.environ:
        step = os.environ.get("SLURM_STEP_ID", "batch")
        return f"slurm:{slurm_job()}/{step}.{os.environ.get('SLURM_PROCID', '0')}@{where}"
    return f"local:{where}"


def slurm_job() -> str:
    """This process's job as squeue names it: ``<array job>_<task>`` for an array task."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID", os.environ["SLURM_JOB_ID"])
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{job}_{task}" if task is not None else job


def parse_owner(owner: str) -> dict:
    """{"kind", "job", "proc", "host", "pid", "start"} of an owner string (fields an older owner
    string lacks are None)."""
    kind, _, rest = owner.partition(":")
    job = proc = None
    if kind != "local":
        job, _, where = rest.partition("/")
        proc, _, rest = where.partition("@")
    host, pid, start = ([*rest.split(":"), None, None][:3] if rest else [None, None, None])
    return {"kind": kind, "job": job, "proc": proc or None, "host": host or None, "pid": pid or None,
            "start": None if start in (None, "", "0") else start}


SLURM_GONE = ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
              "BOOT_FAIL", "DEADLINE")


def slurm_states(timeout: float = 30.0) -> dict[str, str] | None:
    """{job id: state} of every job Slurm still knows, one ``squeue`` call (array tasks one line
    each); None when squeue fails or times out -- then nobody can be declared dead."""
    try:
        p = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T"], capture_output=True, text=True,
                           timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if p.returncode:
        return None
    return dict(line.split("|", 1) for line in p.stdout.split() if "|" in line)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _not_zombie(pid)


def liveness(me: str | None = None):
    """An ``is_alive(owner) -> bool`` for :meth:`Ledger.release_lost` (conservative: unknown means
    alive).  Squeue is asked at most once, lazily, before the ledger is locked.  A process on this
    host is checked by pid; a Slurm worker's job must still be in the queue; with ``me`` (a worker
    starting) an earlier incarnation of the same task and procid -- a requeued job -- is dead."""
    here = socket.gethostname()
    states: list = []
    mine = parse_owner(me) if me else None

    def alive(owner: str | None) -> bool:
        if not owner:
            return False
        o = parse_owner(owner)
        if o["host"] == here and o["pid"] and o["pid"].isdigit():
            pid = int(o["pid"])
            if not _pid_alive(pid) or (o["start"] and process_start(pid) != o["start"]):
                return False  # gone, or its pid now belongs to another process
        if o["kind"] == "local":
            return True  # its pid lives (checked above), or it runs on another host
        if o["kind"] != "slurm":
            return True
        same_task = mine is not None and (o["job"], o["proc"]) == (mine["job"], mine["proc"])
        if same_task and owner != me and mine["kind"] == "slurm":
            return False  # the same task and rank before a requeue: only one incarnation runs at a time
        if not states:
            states.append(slurm_states())
        known = states[0]
        if known is None:
            return True
        state = known.get(o["job"])
        return state is not None and state not in SLURM_GONE

    return alive


def _not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


def reconcile(cdir: Path, ledger: Ledger | None = None, full: bool = False) -> dict:
    """Bring the ledger in line with the disk: a verified output means done, a done scene without
    one (or whose output no longer verifies: truncated, a size or -- with ``full`` -- a sha256
    other than the one recorded when it was written, any chunk failing its checksum) goes back to
    pending, claims of dead workers are released.  The recorded size is compared before the file
    is parsed at all (a damaged HDF5 header can make libhdf5 itself loop).  Returns what changed."""
    from ..inference.pipeline import output_record, verify_output
    own = ledger is None
    ledger = ledger or open_ledger(cdir)
    changed = {"done": [], "requeued": [], "lost": ledger.release_lost(liveness())}
    try:
        for sc in ledger.scenes():
            exists = Path(sc.output).exists()
            if exists and sc.state != "done":
                try:
                    verify_output(sc.output, full=full)
                    ledger.mark(sc.slot, "done", record=output_record(sc.output))
                    changed["done"].append(sc.slot)
                except CloudSRError as e:
                    log.warning("%s", e)
            elif sc.state == "done":
                reason = "output vanished"
                try:
                    if exists:
                        verify_output(sc.output, full=full, record=sc.record)
                        reason = None
                except CloudSRError as e:  # truncated, replaced or corrupt: computed again
                    reason = one_line(e)
                if reason:
                    ledger.mark(sc.slot, "pending", reason)
                    changed["requeued"].append(sc.slot)
    finally:
        if own:
            ledger.close()
    return changed


# ----------------------------------------------------------------------------- the worker
def work(cdir: str | Path, owner: str | None = None, limit: int | None = None) -> dict:
    """Claim and process scenes until none is left (or ``limit`` were done, or the campaign is
    cancelled); returns counts.  SIGTERM (``submit cancel``, ``scancel``, a preemption) stops the
    scene in hand at its next tile batch and gives it back uncounted (``preempted``)."""
    from ..data.sensors import load_registry
    from ..inference.mpi import Ranks
    from ..inference.pipeline import ScenePipeline
    cdir = Path(cdir)
    spec = load_spec(cdir)
    owner = owner or owner_here()
    ledger = open_ledger(cdir)
    ledger.release_lost(liveness(owner))  # dead workers' claims, and this task's own before a requeue
    pipe = None
    counts = {"done": 0, "failed": 0, "preempted": 0}
    stop = None
    with signals.stop_on(signal.SIGTERM):
        try:
            while limit is None or counts["done"] + counts["failed"] < limit:
                stop = "campaign cancelled" if ledger.cancelled() else signals.received()
                if stop:
                    break
                sc = ledger.claim(owner, spec.max_attempts)
                if sc is None:
                    break
                t0 = time.perf_counter()
                try:
                    if pipe is None:  # models load once per worker, after there is work
                        pipe = ScenePipeline(infer_config(spec), load_registry(), Ranks(),
                                             output_dir(cdir, spec), progress=False)
                    res = pipe.run(sc.files, dt.datetime.fromisoformat(sc.slot))
                    if str(res.path) != sc.output:
                        raise CloudSRError(f"{res.path}: output name differs from the ledger's {sc.output}")
                    ledger.finish(sc.slot, owner, time.perf_counter() - t0, res.record)
                    counts["done"] += 1
                    log.info("%s %s: done in %.1f s", owner, sc.slot, time.perf_counter() - t0)
                except Interrupted as e:  # told to stop: not this scene's fault, not an attempt
                    ledger.give_back(sc.slot, owner, one_line(e))
                    counts["preempted"] += 1
                    stop = str(e)
                    log.warning("%s %s: given back (%s)", owner, sc.slot, e)
                    break
                except Exception as e:  # noqa: BLE001 - record any failure; the other scenes go on
                    msg = one_line(str(e) if isinstance(e, CloudSRError)
                                   else f"{e.__class__.__name__}: {e}")[:500]
                    state = ledger.fail(sc.slot, owner, msg, spec.max_attempts)
                    counts["failed"] += 1
                    log.error("%s %s: %s (%s)", owner, sc.slot, msg, state)
        finally:
            ledger.close()
    if stop:
        log.warning("%s: stopped (%s)", owner, stop)
        counts["stopped"] = stop
    return counts


def set_cancelled(cdir: str | Path, on: bool) -> None:
    ledger = open_ledger(Path(cdir))
    try:
        ledger.set_cancelled(on)
    finally:
        ledger.close()


def process_start(pid: int) -> str | None:
    """The kernel's start time of a process (clock ticks since boot, /proc/PID/stat field 22): with
    the host it names one process for good, where a pid alone may be reused."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def local_job_info(pid: int) -> str:
    """What the ledger keeps about a local worker to signal it safely later."""
    return json.dumps({"host": socket.gethostname(), "start": process_start(pid)})


def signal_local_job(job_id: str, info: str, signum: int = signal.SIGTERM) -> bool:
    """SIGTERM a local worker only if it is the recorded process (same host and start time)."""
    try:
        rec = json.loads(info or "{}")
        pid = int(job_id)
    except (ValueError, TypeError):
        return False
    if rec.get("host") != socket.gethostname() or not rec.get("start") or process_start(pid) != rec["start"]:
        return False
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True


def give_back_own(cdir: str | Path, owner: str | None = None, why: str = "requeued") -> None:
    """Return this worker's claim uncounted (Submitit calls it on a timeout/preemption signal,
    just before it requeues the task)."""
    ledger = open_ledger(Path(cdir))
    try:
        owner = owner or owner_here()
        for sc in ledger.scenes():
            if sc.state == "running" and sc.owner == owner:
                ledger.give_back(sc.slot, owner, why)
    finally:
        ledger.close()


# ----------------------------------------------------------------------------- status
def status(cdir: Path) -> dict:
    """Counts per state, throughput, ETA, failures with reasons, who runs what."""
    ledger = open_ledger(cdir)
    try:
        reconcile(cdir, ledger)
        counts = ledger.counts()
        per_hour, mean_s = ledger.throughput()
        todo = counts["pending"] + counts["running"] + counts["failed"]
        scenes = ledger.scenes()
        running = [(s.slot, s.owner) for s in scenes if s.state == "running"]
        workers = max(1, len({o for _, o in running}))
        eta = None if not mean_s else todo * mean_s / workers
        return {"name": cdir.name, "counts": counts, "total": len(scenes),
                "scenes_per_hour": round(per_hour, 1),
                "mean_s_per_scene": None if mean_s is None else round(mean_s, 1),
                "eta_s": None if eta is None else round(eta), "running": running,
                "failures": [(s.slot, s.state, s.attempts, s.error) for s in scenes
                             if s.state in ("failed", "quarantined", "missing")],
                "jobs": [j[0] for j in ledger.jobs()]}
    finally:
        ledger.close()


def format_status(st: dict) -> str:
    c = st["counts"]
    lines = [f"campaign {st['name']}: {st['total']} scenes",
             "  " + "  ".join(f"{k} {c[k]}"
                              for k in ("done", "running", "pending", "failed", "quarantined", "missing")),
             f"  throughput {st['scenes_per_hour']} scenes/h, mean {st['mean_s_per_scene']} s/scene, "
             f"ETA {'-' if st['eta_s'] is None else str(dt.timedelta(seconds=st['eta_s']))}"]
    if st["jobs"]:
        lines.append("  jobs: " + " ".join(st["jobs"]))
    for slot, owner in st["running"]:
        lines.append(f"  running  {slot}  {owner}")
    for slot, state, attempts, err in st["failures"]:
        lines.append(f"  {state:<11} {slot}  attempts {attempts}  {err or ''}")
    return "\n".join(lines)

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
import logging
import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import build, dump_yaml, load, read_yaml
from ..errors import CloudSRError, ConfigError, one_line
from .ledger import Ledger

log = logging.getLogger(__name__)


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
        from ..config import require
        require(self.max_attempts >= 1, where, "max_attempts must be >= 1")
        require(self.workers >= 1, where, "workers must be >= 1")
        require(bool(self.name) and "/" not in self.name and not self.name.startswith("."), where,
                f"name: '{self.name}' is not a plain directory name")


def campaign_dir(root: str | Path, name: str) -> Path:
    return Path(root).resolve() / name


def load_spec(cdir: Path) -> CampaignSpec:
    path = cdir / "campaign.yaml"
    if not path.exists():
        raise ConfigError(f"{cdir}: no campaign here (campaign.yaml missing)")
    return build(CampaignSpec, read_yaml(path), str(path))


def output_dir(cdir: Path, spec: CampaignSpec) -> Path:
    return Path(spec.out_dir).resolve() if spec.out_dir else cdir / "output"


def infer_config(spec: CampaignSpec):
    from ..schema import InferConfig
    return load(InferConfig, spec.infer_config, [f"pair={spec.pair}", *spec.infer_set])


def create(root: str | Path, spec: CampaignSpec, registry, dry_run: bool = False) -> tuple[Path, int, int]:
    """Write the campaign directory and its ledger; returns (dir, scenes, missing).  Everything is
    checked before anything is written: dates, range, archive, pair, checkpoints.  ``dry_run``
    checks and counts, and writes nothing."""
    from ..data.index import ArchiveIndex, parse_date, parse_every, slot_times
    from ..inference.pipeline import checkpoints_for, output_name
    spec.validate("campaign")
    start, end, every = parse_date(spec.start), parse_date(spec.end or spec.start), parse_every(spec.every)
    if end < start:
        raise CloudSRError(f"--end {spec.end} is before --start {spec.start}")
    pair = registry.pair(spec.pair)
    cfg = infer_config(spec)
    for ck in checkpoints_for(cfg):
        if not Path(ck).exists():
            raise ConfigError(f"{ck}: checkpoint does not exist (stages '{cfg.stages}'; set it with --set)")
    idx = ArchiveIndex(spec.archive, registry)
    tol = dt.timedelta(minutes=spec.tolerance_minutes) if spec.tolerance_minutes else None
    cdir = campaign_dir(root, spec.name)
    out = output_dir(cdir, spec)
    rows, missing = [], 0
    for t in slot_times(start, end, every):
        try:
            sc = idx.find(pair.lr, pair.lr_formats, t, tol)
            files = [str(f) for f in sc.files]
        except CloudSRError:
            files, missing = [], missing + 1
        rows.append((t.isoformat(), files, str(out / output_name(pair.name, cfg.stages, t))))
    spec_path = cdir / "campaign.yaml"
    if dry_run:
        return cdir, len(rows), missing
    (cdir / "logs").mkdir(parents=True, exist_ok=True)
    if spec_path.exists():
        old = load_spec(cdir)
        if (old.start, old.end, old.every, old.pair) != (spec.start, spec.end, spec.every, spec.pair):
            raise ConfigError(f"{spec_path}: campaign '{spec.name}' exists with another range; "
                              f"use 'campaign resume {spec.name}' or another --name")
    else:
        spec_path.write_text(dump_yaml(spec))
    ledger = Ledger(cdir / "ledger.sqlite")
    ledger.add_scenes(rows)
    ledger.close()
    return cdir, len(rows), missing


# ----------------------------------------------------------------------------- liveness
def owner_here() -> str:
    """Who is working: a Slurm array task (stable across requeues) or a local process."""
    if "SLURM_JOB_ID" in os.environ:
        job = os.environ.get("SLURM_ARRAY_JOB_ID", os.environ["SLURM_JOB_ID"])
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        return f"slurm:{job}_{task}" if task is not None else f"slurm:{job}"
    return f"local:{socket.gethostname()}:{os.getpid()}"


def is_alive(owner: str | None) -> bool:
    """Whether a claim's owner can still finish it (conservative: unknown means alive)."""
    if not owner:
        return False
    kind, _, rest = owner.partition(":")
    if kind == "local":
        host, _, pid = rest.rpartition(":")
        if host != socket.gethostname():
            return True
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return _not_zombie(int(pid))
    if kind == "slurm":
        try:
            p = subprocess.run(["squeue", "-h", "-j", rest, "-o", "%T"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return True
        return p.returncode == 0 and p.stdout.strip() not in ("", "COMPLETED", "CANCELLED", "FAILED", "TIMEOUT")
    return True


def _not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


def reconcile(cdir: Path, ledger: Ledger | None = None) -> dict:
    """Bring the ledger in line with the disk: a verified output means done, a done scene without
    one goes back to pending, claims of dead workers are released.  Returns what changed."""
    from ..inference.pipeline import verify_output
    own = ledger is None
    ledger = ledger or Ledger(cdir / "ledger.sqlite")
    changed = {"done": [], "requeued": [], "lost": ledger.release_lost(is_alive)}
    try:
        for sc in ledger.scenes():
            exists = Path(sc.output).exists()
            if exists and sc.state != "done":
                try:
                    verify_output(sc.output)
                    ledger.mark(sc.slot, "done")
                    changed["done"].append(sc.slot)
                except CloudSRError as e:
                    log.warning("%s", e)
            elif sc.state == "done" and not exists:
                ledger.mark(sc.slot, "pending", "output vanished")
                changed["requeued"].append(sc.slot)
    finally:
        if own:
            ledger.close()
    return changed


# ----------------------------------------------------------------------------- the worker
def work(cdir: str | Path, owner: str | None = None, limit: int | None = None) -> dict:
    """Claim and process scenes until none is left (or ``limit`` were done); returns counts."""
    from ..data.sensors import load_registry
    from ..inference.mpi import Ranks
    from ..inference.pipeline import ScenePipeline
    cdir = Path(cdir)
    spec = load_spec(cdir)
    owner = owner or owner_here()
    ledger = Ledger(cdir / "ledger.sqlite")
    ledger.release_lost(lambda o: o != owner and is_alive(o))  # a requeued task takes back its own claims
    pipe = None
    counts = {"done": 0, "failed": 0}
    try:
        while limit is None or counts["done"] + counts["failed"] < limit:
            sc = ledger.claim(owner, spec.max_attempts)
            if sc is None:
                break
            t0 = time.perf_counter()
            try:
                if pipe is None:  # models load once per worker, after there is work
                    pipe = ScenePipeline(infer_config(spec), load_registry(), Ranks(), output_dir(cdir, spec),
                                         progress=False)
                res = pipe.run(sc.files, dt.datetime.fromisoformat(sc.slot))
                if str(res.path) != sc.output:
                    raise CloudSRError(f"{res.path}: output name differs from the ledger's {sc.output}")
                ledger.finish(sc.slot, owner, time.perf_counter() - t0)
                counts["done"] += 1
                log.info("%s %s: done in %.1f s", owner, sc.slot, time.perf_counter() - t0)
            except Exception as e:  # noqa: BLE001 - record any failure; the other scenes go on
                msg = one_line(str(e) if isinstance(e, CloudSRError) else f"{e.__class__.__name__}: {e}")[:500]
                state = ledger.fail(sc.slot, owner, msg, spec.max_attempts)
                counts["failed"] += 1
                log.error("%s %s: %s (%s)", owner, sc.slot, msg, state)
    finally:
        ledger.close()
    return counts


# ----------------------------------------------------------------------------- status
def status(cdir: Path) -> dict:
    """Counts per state, throughput, ETA, failures with reasons, who runs what."""
    ledger = Ledger(cdir / "ledger.sqlite")
    try:
        reconcile(cdir, ledger)
        counts = ledger.counts()
        per_hour, mean_s = ledger.throughput()
        todo = counts["pending"] + counts["running"] + counts["failed"]
        scenes = ledger.scenes()
        running = [(s.slot, s.owner) for s in scenes if s.state == "running"]
        workers = max(1, len({o for _, o in running}))
        eta = None if not mean_s else todo * mean_s / workers
        return {"name": cdir.name, "counts": counts, "total": len(scenes), "scenes_per_hour": round(per_hour, 1),
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
             "  " + "  ".join(f"{k} {c[k]}" for k in ("done", "running", "pending", "failed", "quarantined", "missing")),
             f"  throughput {st['scenes_per_hour']} scenes/h, mean {st['mean_s_per_scene']} s/scene, "
             f"ETA {'-' if st['eta_s'] is None else str(dt.timedelta(seconds=st['eta_s']))}"]
    if st["jobs"]:
        lines.append("  jobs: " + " ".join(st["jobs"]))
    for slot, owner in st["running"]:
        lines.append(f"  running  {slot}  {owner}")
    for slot, state, attempts, err in st["failures"]:
        lines.append(f"  {state:<11} {slot}  attempts {attempts}  {err or ''}")
    return "\n".join(lines)

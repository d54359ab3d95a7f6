"""The campaign ledger: which scenes exist, who works on them, every attempt, every error.

SQLite (one file in the campaign directory, ``BEGIN IMMEDIATE`` transactions) so that array
tasks on one file system claim scenes atomically: a scene is handed to exactly one worker at a
time.  The journal is SQLite's rollback journal (``DELETE``), which needs only POSIX byte-range
locks and so holds across nodes on a parallel file system mounted with coherent locking (Lustre
``-o flock``, GPFS); WAL needs shared memory among all its processes on one host and is used only
when asked for (``CLOUDSR_LEDGER_JOURNAL=wal``: single-host campaigns).  Not on NFS without locks.
The ledger records; the *truth* of "done" is the output file itself (it exists only complete,
and must verify) -- :func:`cloudsr_hpc.orchestration.campaign.reconcile`
brings the ledger in line with the disk.

Scene states: ``pending`` -> ``running`` -> ``done`` | ``failed`` (retried) | ``quarantined``
(failed ``max_attempts`` times: reported, never blocks the rest) ; ``missing`` (no input in the
archive for that slot: recorded, not attempted).  An attempt ends ``done``, ``failed`` (counts
against ``max_attempts``), ``lost`` (its worker vanished: kill -9, a dead node, a task cancelled
before it could answer) or ``preempted`` (its worker was told to stop -- cancel, preemption, time
limit -- and gave the scene back).  Neither a lost nor a preempted claim is a failure of the
scene: neither spends an attempt.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS scenes (
    slot TEXT PRIMARY KEY,          -- nominal time, ISO
    files TEXT NOT NULL,            -- input files, ';'-separated ('' when missing)
    output TEXT NOT NULL,           -- final output path
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    owner TEXT,                     -- worker holding the claim
    error TEXT,                     -- last error
    seconds REAL,                   -- of the successful attempt
    record TEXT                     -- {"size", "sha256"} of the output when it was written (JSON)
);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    slot TEXT NOT NULL,
    owner TEXT NOT NULL,
    started REAL NOT NULL,
    ended REAL,
    state TEXT NOT NULL,            -- running | done | failed | lost | preempted
    error TEXT
);
CREATE TABLE IF NOT EXISTS control (
    key TEXT PRIMARY KEY,           -- 'cancelled': workers claim nothing more while it is set
    value TEXT
);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    submitted REAL NOT NULL,
    info TEXT
);
"""

STATES = ("pending", "running", "done", "failed", "quarantined", "missing")


@dataclass
class Scene:
    slot: str
    files: list[str]
    output: str
    state: str
    attempts: int
    owner: str | None
    error: str | None
    seconds: float | None
    record: dict | None = None  # size and sha256 of the output as written: checked before parsing it


class Ledger:
    def __init__(self, path: str | Path, timeout: float = 120.0):
        self.path = Path(path)
        self.db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        journal = "WAL" if os.environ.get("CLOUDSR_LEDGER_JOURNAL", "").lower() == "wal" else "DELETE"
        self.db.execute(f"PRAGMA journal_mode={journal}")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        columns = {r[1] for r in self.db.execute("PRAGMA table_info(scenes)")}
        if "record" not in columns:  # a ledger from before outputs were recorded
            self.db.execute("ALTER TABLE scenes ADD COLUMN record TEXT")

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self):
        """An immediate (write-locked) transaction: concurrent claimers serialise here."""
        for delay in (0.05, 0.1, 0.2, 0.5, 1, 2, 5):
            try:
                self.db.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError:  # locked beyond the busy timeout
                time.sleep(delay)
        else:
            self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    # -------------------------------------------------------------- scenes
    def add_scenes(self, rows: list[tuple[str, list[str], str]]) -> int:
        """(slot, files, output) rows; slots already present are kept as they are."""
        with self.transaction() as db:
            n0 = db.execute("SELECT COUNT(*) FROM scenes").fetchone()[0]
            db.executemany("INSERT OR IGNORE INTO scenes(slot, files, output, state, error) VALUES "
                           "(?, ?, ?, ?, ?)",
                           [(s, ";".join(f), o, "pending" if f else "missing",
                             None if f else "no input file in the archive within the tolerance")
                            for s, f, o in rows])
            return db.execute("SELECT COUNT(*) FROM scenes").fetchone()[0] - n0

    def scenes(self) -> list[Scene]:
        rows = self.db.execute("SELECT slot, files, output, state, attempts, owner, error, seconds, record "
                               "FROM scenes ORDER BY slot").fetchall()
        return [Scene(r[0], [f for f in r[1].split(";") if f], *r[2:8], json.loads(r[8]) if r[8] else None)
                for r in rows]

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATES, 0)
        out.update(dict(self.db.execute("SELECT state, COUNT(*) FROM scenes GROUP BY state").fetchall()))
        return out

    def claim(self, owner: str, max_attempts: int) -> Scene | None:
        """Atomically take the next pending (or failed, below ``max_attempts``) scene."""
        with self.transaction() as db:
            row = db.execute("SELECT slot FROM scenes WHERE state = 'pending' OR (state = 'failed' AND "
                             "attempts < ?) ORDER BY state = 'failed', slot LIMIT 1",
                             (max_attempts,)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE scenes SET state = 'running', attempts = attempts + 1, owner = ? "
                       "WHERE slot = ?",
                       (owner, row[0]))
            db.execute("INSERT INTO attempts(slot, owner, started, state) VALUES (?, ?, ?, 'running')",
                       (row[0], owner, time.time()))
        return next(s for s in self.scenes() if s.slot == row[0])

    def finish(self, slot: str, owner: str, seconds: float, record: dict | None = None) -> None:
        """Done, with the output's size and sha256 as written (``record``)."""
        with self.transaction() as db:
            db.execute("UPDATE scenes SET state = 'done', owner = NULL, error = NULL, seconds = ?, "
                       "record = ? WHERE slot = ?", (seconds, json.dumps(record) if record else None, slot))
            self._close_attempt(db, slot, owner, "done", None)

    def fail(self, slot: str, owner: str, error: str, max_attempts: int) -> str:
        """Record a failure; the scene is quarantined once it has failed ``max_attempts`` times."""
        with self.transaction() as db:
            attempts = db.execute("SELECT attempts FROM scenes WHERE slot = ?", (slot,)).fetchone()[0]
            state = "quarantined" if attempts >= max_attempts else "failed"
            db.execute("UPDATE scenes SET state = ?, owner = NULL, error = ? WHERE slot = ?",
                       (state, error, slot))
            self._close_attempt(db, slot, owner, "failed", error)
        return state

    @staticmethod
    def _close_attempt(db, slot, owner, state, error):
        db.execute("UPDATE attempts SET ended = ?, state = ?, error = ? WHERE id = (SELECT MAX(id) FROM "
                   "attempts WHERE slot = ? AND owner = ? AND state = 'running')",
                   (time.time(), state, error, slot, owner))

    def release_lost(self, is_alive) -> list[str]:
        """Claims whose owner is gone (killed worker, dead node, cancelled task) go back to pending
        without spending an attempt; the attempt is recorded as ``lost``.  ``is_alive(owner) ->
        bool`` is asked *before* the write transaction (it may query the scheduler), once per
        owner; only claims that still belong to a dead owner are then released."""
        running = self.db.execute("SELECT slot, owner FROM scenes WHERE state = 'running'").fetchall()
        dead = {o for o in {o for _, o in running} if not is_alive(o)}
        lost: list[str] = []
        if not dead:
            return lost
        with self.transaction() as db:
            for slot, owner in running:
                if owner in dead and db.execute(
                        "UPDATE scenes SET state = 'pending', owner = NULL, error = ?, "
                        "attempts = attempts - 1 WHERE slot = ? AND owner = ? AND state = 'running'",
                        (f"worker {owner} lost", slot, owner)).rowcount:
                    self._close_attempt(db, slot, owner, "lost", None)
                    lost.append(slot)
        return lost

    def give_back(self, slot: str, owner: str, reason: str) -> None:
        """The owner stops (cancel, preemption, time limit) and returns its claim: pending again,
        the attempt recorded as ``preempted`` and not counted against ``max_attempts``."""
        with self.transaction() as db:
            if db.execute("UPDATE scenes SET state = 'pending', owner = NULL, error = ?, "
                          "attempts = attempts - 1 WHERE slot = ? AND owner = ? AND state = 'running'",
                          (reason, slot, owner)).rowcount:
                self._close_attempt(db, slot, owner, "preempted", reason)

    # -------------------------------------------------------------- control
    def set_cancelled(self, on: bool, why: str = "") -> None:
        """While set, workers claim nothing more (``submit cancel``; ``campaign resume`` clears it)."""
        with self.transaction() as db:
            if on:
                db.execute("INSERT OR REPLACE INTO control VALUES ('cancelled', ?)", (why or utcnow(),))
            else:
                db.execute("DELETE FROM control WHERE key = 'cancelled'")

    def cancelled(self) -> str | None:
        row = self.db.execute("SELECT value FROM control WHERE key = 'cancelled'").fetchone()
        return row[0] if row else None

    def retry(self, states: tuple[str, ...]) -> list[str]:
        """Scenes in ``states`` back to ``pending`` with their attempt count reset (the attempts
        table keeps their history); returns their slots."""
        marks = ", ".join("?" * len(states))
        with self.transaction() as db:
            rows = db.execute(f"SELECT slot FROM scenes WHERE state IN ({marks}) ORDER BY slot", states)
            slots = [r[0] for r in rows]
            db.execute(f"UPDATE scenes SET state = 'pending', attempts = 0, owner = NULL, error = NULL "
                       f"WHERE state IN ({marks})", states)
        return slots

    def mark(self, slot: str, state: str, error: str | None = None, record: dict | None = None) -> None:
        with self.transaction() as db:
            db.execute("UPDATE scenes SET state = ?, error = ?, owner = NULL, record = ? WHERE slot = ?",
                       (state, error, json.dumps(record) if record else None, slot))

    def attempts(self, slot: str | None = None) -> list[tuple]:
        q = "SELECT slot, owner, started, ended, state, error FROM attempts"
        return self.db.execute(q + (" WHERE slot = ? ORDER BY id" if slot else " ORDER BY id"),
                               (slot,) if slot else ()).fetchall()

    # -------------------------------------------------------------- jobs
    def add_job(self, job_id: str, kind: str, info: str = "") -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?)", (job_id, kind, time.time(), info))

    def jobs(self) -> list[tuple]:
        return self.db.execute("SELECT job_id, kind, submitted, info FROM jobs ORDER BY submitted").fetchall()

    def throughput(self) -> tuple[float, float | None]:
        """(scenes per hour over finished attempts, mean seconds per scene)."""
        rows = self.db.execute("SELECT started, ended FROM attempts WHERE state = 'done'").fetchall()
        if not rows:
            return 0.0, None
        span = max(e for _, e in rows) - min(s for s, _ in rows)
        mean = sum(e - s for s, e in rows) / len(rows)
        return (len(rows) / span * 3600 if span > 0 else 0.0), mean


def utcnow() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()

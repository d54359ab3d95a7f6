"""HDF5 training shards: writing them, and streaming them into torch across ranks.

A shard holds N patches: ``lr`` (N, C, p, p) and ``hr`` (N, C, p*s, p*s) in physical units with
NaN where invalid (``hr``-only shards for Stage 2), chunked one patch per chunk and compressed,
plus per-patch ``time``/``row``/``col`` and provenance attributes (pair, channels, scale,
normalisation, source files, config, package version).  Shards are written to a temporary name
and renamed: a shard that exists is complete.
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import h5py
import numpy as np

from ..core.files import atomic_write
from ..errors import InputError

SHARD_KINDS = ("pairs", "hr")


class ShardWriter:
    """Accumulates patches and writes ``<kind>-NNNNN.h5`` shards of ``shard_size`` patches."""

    def __init__(self, out_dir: Path, kind: str, shard_size: int, attrs: dict, compression: str = "gzip",
                 level: int = 4):
        assert kind in SHARD_KINDS
        self.out_dir, self.kind, self.shard_size = Path(out_dir), kind, shard_size
        self.attrs, self.compression, self.level = attrs, compression, level
        self.buf: dict[str, list] = {"lr": [], "hr": [], "time": [], "row": [], "col": []}
        self.sources: list[str] = []
        self.count = 0
        self.written: list[Path] = []
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._next = 0  # a re-run rewrites the same names (each replaced atomically): never duplicates

    def add(self, hr: np.ndarray, when: dt.datetime, row: int, col: int, sources: list[str],
            lr: np.ndarray | None = None) -> None:
        if lr is not None:
            self.buf["lr"].append(lr)
        self.buf["hr"].append(hr)
        self.buf["time"].append(when.isoformat())
        self.buf["row"].append(row)
        self.buf["col"].append(col)
        self.sources.extend(s for s in sources if s not in self.sources)
        self.count += 1
        if len(self.buf["hr"]) >= self.shard_size:
            self.flush()

    def _dataset(self, f: h5py.File, name: str, arr: np.ndarray) -> None:
        opts = {}
        if self.compression != "none":
            opts = {"compression": self.compression, "shuffle": True}
            if self.compression == "gzip":
                opts["compression_opts"] = self.level
        f.create_dataset(name, data=arr, chunks=(1,) + arr.shape[1:], **opts)

    def flush(self) -> Path | None:
        if not self.buf["hr"]:
            return None
        path = self.out_dir / f"{self.kind}-{self._next:05d}.h5"
        with atomic_write(path) as tmp:
            with h5py.File(tmp, "w") as f:
                for key in ("lr", "hr"):
                    if self.buf[key]:
                        self._dataset(f, key, np.stack(self.buf[key]).astype(np.float32))
                f.create_dataset("time", data=np.array(self.buf["time"], dtype="S32"))
                f.create_dataset("row", data=np.array(self.buf["row"], np.int32))
                f.create_dataset("col", data=np.array(self.buf["col"], np.int32))
                for k, v in self.attrs.items():
                    f.attrs[k] = json.dumps(v) if isinstance(v, (dict, list)) else v
                f.attrs["source_files"] = json.dumps(self.sources)
                f.attrs["created"] = dt.datetime.now(dt.timezone.utc).isoformat()
        self.written.append(path)
        self._next += 1
        self.buf = {k: [] for k in self.buf}
        self.sources = []
        return path


    def remove_stale(self) -> list[Path]:
        """Delete this kind's shards in the directory that this run did not write (left by an earlier
        run over more scenes): the directory then holds exactly this run's patches."""
        stale = sorted(set(self.out_dir.glob(f"{self.kind}-*.h5")) - set(self.written))
        for p in stale:
            p.unlink()
        return stale


def shard_attrs(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return {k: (json.loads(v) if isinstance(v, str) and v[:1] in "[{" else v) for k, v in f.attrs.items()}


def list_shards(directory: str | Path, kind: str) -> list[Path]:
    d = Path(directory)
    if not d.is_dir():
        raise InputError(f"{d}: shard directory does not exist")
    shards = sorted(d.glob(f"{kind}-*.h5"))
    if not shards:
        raise InputError(f"{d}: no {kind}-*.h5 shards (run `python -m cloudsr_hpc.submit pairs` first)")
    return shards


def shard_lengths(shards: list[Path]) -> list[int]:
    out = []
    for p in shards:
        try:
            with h5py.File(p, "r") as f:
                out.append(int(f["hr"].shape[0]))
        except (OSError, KeyError) as e:
            raise InputError(f"{p}: not a readable shard ({e.__class__.__name__}: {e})") from None
    return out

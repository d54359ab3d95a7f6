"""Resumable training state (DeepSpeed checkpoints); the inference export is
:mod:`cloudsr_hpc.models.export`.

* DeepSpeed writes ``ckpt/step<N>/`` (all ranks); only after every rank has
  finished does rank 0 write the directory's digest manifest (size + sha256 of every file) and
  atomically point ``ckpt/latest`` at it.  A run killed mid-save leaves a partial directory
  without a manifest: it is never resumed.  Resuming takes the newest directory whose files all
  match their manifest (a corrupt one is skipped with a warning) and unpickles nothing but
  tensors, containers and an allow-list of DeepSpeed's plain state classes
  (``weights_only=True``), each file read once and checked against its digest before it is
  parsed.  The newest ``keep`` verified directories stay; older ones go after a newer one verified.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import shutil
from pathlib import Path

import torch

from ..core.files import sha256, write_text_atomic
from ..errors import InputError, one_line

CKPT_FORMAT = "cloudsr-hpc-ckpt/1"
MANIFEST = "cloudsr_manifest.json"  # inside each step directory
log = logging.getLogger(__name__)


def write_pointer(ckpt_dir: Path, tag: str) -> None:
    write_text_atomic(Path(ckpt_dir) / "latest", tag + "\n")


def read_pointer(ckpt_dir: Path) -> str | None:
    p = Path(ckpt_dir) / "latest"
    return p.read_text().strip() if p.exists() else None


def step_of(tag: str) -> int | None:
    m = re.fullmatch(r"step(\d+)", tag)
    return int(m.group(1)) if m else None


def _files(step_dir: Path) -> list[Path]:
    """Every file of a step directory but the manifest and our own atomic temporaries."""
    return sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != MANIFEST
                  and not (p.name.startswith(f".{MANIFEST}.") and p.name.endswith(".part")))


def write_manifest(step_dir: Path) -> dict:
    """Record size and sha256 of every file of a finished save (call once every rank has saved)."""
    step_dir = Path(step_dir)
    files = {p.relative_to(step_dir).as_posix(): {"size": p.stat().st_size, "sha256": sha256(p)}
             for p in _files(step_dir)}
    if not files:
        raise InputError(f"{step_dir}: empty checkpoint directory, nothing to record")
    write_text_atomic(step_dir / MANIFEST, json.dumps({"format": CKPT_FORMAT, "files": files}, indent=1))
    return files


def verify_checkpoint(step_dir: Path) -> dict[str, str]:
    """{absolute path: sha256} of a step directory whose files all match its manifest, exactly
    (none missing, none added, same size and digest); else InputError with the first reason."""
    step_dir = Path(step_dir)
    mf = step_dir / MANIFEST
    if not mf.is_file():
        raise InputError(f"{step_dir}: no digest manifest (a save that did not finish, "
                         f"or not written by cloudsr-hpc)")
    try:
        doc = json.loads(mf.read_text())
        files = {str(k): (int(v["size"]), str(v["sha256"])) for k, v in doc["files"].items()}
        assert doc["format"] == CKPT_FORMAT and files
    except Exception:  # noqa: BLE001 - any malformed manifest is a bad checkpoint
        raise InputError(f"{mf}: unreadable digest manifest") from None
    present = {p.relative_to(step_dir).as_posix() for p in _files(step_dir)}
    if present - files.keys():
        raise InputError(f"{step_dir}: {sorted(present - files.keys())[0]} is not in the digest manifest")
    out = {}
    for name, (size, digest) in sorted(files.items()):
        p = step_dir / name
        if name not in present:
            raise InputError(f"{p}: missing (listed in the digest manifest)")
        if p.stat().st_size != size:
            raise InputError(f"{p}: {p.stat().st_size} bytes, the digest manifest says {size} "
                             f"(truncated or replaced)")
        if sha256(p) != digest:
            raise InputError(f"{p}: sha256 does not match the digest manifest (corrupt or replaced)")
        out[str(p.resolve())] = digest
    return out


def step_dirs(ckpt_dir: Path) -> list[Path]:
    """``step<N>`` directories, newest first."""
    dirs = [p for p in Path(ckpt_dir).glob("step*") if p.is_dir() and step_of(p.name) is not None]
    return sorted(dirs, key=lambda p: step_of(p.name), reverse=True)


def pick_checkpoint(ckpt_dir: Path) -> tuple[str, dict[str, str]] | None:
    """(tag, verified digests) of the newest step directory that verifies, warning about each newer
    one that does not; None for a fresh start (no finished save); InputError when saves exist but
    none verifies (resuming from scratch would silently throw the run away)."""
    ckpt_dir = Path(ckpt_dir)
    finished = [d for d in step_dirs(ckpt_dir) if (d / MANIFEST).exists()]
    if not finished:
        tag = read_pointer(ckpt_dir)
        if tag is not None:
            raise InputError(f"{ckpt_dir / tag}: no digest manifest (a checkpoint from before they were "
                             f"verified); refusing to unpickle it -- move {ckpt_dir} away to start over")
        return None
    first = None
    for d in finished:
        try:
            return d.name, verify_checkpoint(d)
        except InputError as e:
            first = first or e
            log.warning("skipping checkpoint %s: %s", d.name, e)
    raise InputError(f"{ckpt_dir}: no checkpoint verifies (newest: {first}); move it away to start over")


def rotate_checkpoints(ckpt_dir: Path, keep: int, current: str) -> list[Path]:
    """Keep the ``keep`` newest finished step directories up to ``current`` (just verified); remove
    older ones and unfinished saves older than ``current``.  Later steps (another run's) stay."""
    now = step_of(current)
    older = [d for d in step_dirs(ckpt_dir) if step_of(d.name) <= now]
    finished = [d for d in older if (d / MANIFEST).exists()]
    drop = finished[keep:] + [d for d in older if not (d / MANIFEST).exists() and d.name != current]
    for d in drop:
        shutil.rmtree(d, ignore_errors=True)
    return drop


def deepspeed_safe_globals() -> list:
    """The plain state classes DeepSpeed pickles into its checkpoints (ZeRO partitions, loss
    scaling); everything else in them is tensors and containers."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address
    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def safe_load(path: str | Path, digest: str, map_location=None, allow: list | None = None):
    """``torch.load(weights_only=True)`` of bytes first checked against ``digest``: read once, so
    the file cannot change between the check and the parse."""
    data = Path(path).read_bytes()
    if hashlib.sha256(data).hexdigest() != digest:
        raise InputError(f"{path}: sha256 changed since the checkpoint was verified")
    try:
        with torch.serialization.safe_globals(allow or []):
            return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - an object outside the allow-list, or a malformed file
        raise InputError(f"{path}: refused by the weights-only loader ({one_line(e)[:240]})") from None


def guard_engine_loads(engine, digests: dict[str, str]) -> None:
    """Route every file DeepSpeed loads through :func:`safe_load`; a file outside the verified set
    is refused before it is opened."""
    ce = getattr(engine, "checkpoint_engine", None)
    if ce is None:
        raise InputError("DeepSpeed engine has no checkpoint engine to guard; refusing to resume")
    allow = deepspeed_safe_globals()

    def load(path, map_location=None):
        key = str(Path(path).resolve())
        if key not in digests:
            raise InputError(f"{path}: not among the verified checkpoint files; refusing to load it")
        return safe_load(path, digests[key], map_location, allow)

    ce.load = load

"""Checkpoints: resumable training state (DeepSpeed) and the consolidated inference export.

* Training state: DeepSpeed writes ``ckpt/step<N>/`` (all ranks); only after every rank has
  finished does rank 0 atomically point ``ckpt/latest`` at it.  A run killed mid-save leaves a
  partial directory that nothing points to: the previous checkpoint stays the one resumed.
* Inference export: ``export/model.pt`` holds EMA weights + config + channels + normalisation as
  plain tensors and JSON (loadable with ``torch.load(weights_only=True)``) and ``manifest.json``
  its sha256; the loader refuses a file whose checksum or contents do not match.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from ..errors import InputError
from ..data.scene import atomic_path

FORMAT = "cloudsr-hpc-model/1"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_text_atomic(path: Path, text: str) -> None:
    tmp = atomic_path(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def write_pointer(ckpt_dir: Path, tag: str) -> None:
    write_text_atomic(Path(ckpt_dir) / "latest", tag + "\n")


def read_pointer(ckpt_dir: Path) -> str | None:
    p = Path(ckpt_dir) / "latest"
    return p.read_text().strip() if p.exists() else None


def export_model(out_dir: Path, state_dict: dict, meta: dict) -> Path:
    """Write ``model.pt`` + ``manifest.json`` atomically; returns the model path."""
    out_dir = Path(out_dir)
    path = out_dir / "model.pt"
    tmp = atomic_path(path)
    try:
        torch.save({"format": FORMAT, "meta": json.dumps(meta),
                    "state_dict": {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}}, tmp)
        digest = sha256(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    write_text_atomic(out_dir / "manifest.json", json.dumps({"file": path.name, "sha256": digest, "format": FORMAT}, indent=1))
    return path


def load_model(path: str | Path) -> tuple[dict, dict]:
    """(state_dict, meta) of an exported model, after checking its sha256 and format."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: checkpoint not found")
    manifest = path.parent / "manifest.json"
    if not manifest.exists():
        raise InputError(f"{path}: no manifest.json beside it (not an exported cloudsr-hpc model)")
    try:
        expected = json.loads(manifest.read_text())["sha256"]
    except (ValueError, KeyError):
        raise InputError(f"{manifest}: unreadable manifest") from None
    if sha256(path) != expected:
        raise InputError(f"{path}: sha256 does not match manifest.json (corrupt or replaced checkpoint)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise InputError(f"{path}: cannot load with weights_only=True ({e.__class__.__name__})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise InputError(f"{path}: not a {FORMAT} checkpoint")
    meta = json.loads(blob["meta"])
    meta["sha256"] = expected  # verified above; outputs record it as provenance
    return blob["state_dict"], meta

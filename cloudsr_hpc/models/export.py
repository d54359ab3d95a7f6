"""The consolidated inference export of a trained stage, and its loader.

``export/model.pt`` holds EMA weights + config + channels + normalisation as plain tensors and
JSON (loadable with ``torch.load(weights_only=True)``) and ``manifest.json`` its sha256; the loader
refuses a file whose checksum or contents do not match.  Training writes it
(:mod:`cloudsr_hpc.training.trainer`); :class:`cloudsr_hpc.models.cascade.Stage` loads it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..core.files import atomic_write, sha256, write_text_atomic
from ..errors import InputError

FORMAT = "cloudsr-hpc-model/1"


def export_model(out_dir: Path, state_dict: dict, meta: dict) -> Path:
    """Write ``model.pt`` + ``manifest.json`` atomically; returns the model path."""
    out_dir = Path(out_dir)
    path = out_dir / "model.pt"
    with atomic_write(path) as tmp:
        torch.save({"format": FORMAT, "meta": json.dumps(meta),
                    "state_dict": {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}}, tmp)
        digest = sha256(tmp)
    write_text_atomic(out_dir / "manifest.json",
                      json.dumps({"file": path.name, "sha256": digest, "format": FORMAT}, indent=1))
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
    except (ValueError, KeyError, TypeError):  # TypeError: a manifest that is not an object
        raise InputError(f"{manifest}: unreadable manifest (expected an object with \"sha256\")") from None
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

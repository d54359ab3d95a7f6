"""LPIPS (Zhang et al. 2018, AlexNet, v0.1) through the ``lpips`` package, strictly offline.

The ``lpips`` wheel ships its linear heads; the AlexNet backbone (torchvision's
``alexnet-owt-7be5be79.pth``) is a download, and compute nodes have no internet.  So the backbone
is *staged* once by ``python -m cloudsr_hpc.submit weights stage --from FILE``: the file is checked
(AlexNet feature weights, loadable with ``weights_only=True``), copied into the weights directory
with a manifest holding its SHA-256, and verified against that checksum at every load.  Without a
staged backbone LPIPS is *unavailable* -- reported as such with the staging hint, never computed
with a random backbone.  A backbone other than the official file is staged only with
``--allow-unofficial`` and is labelled so wherever its numbers appear.

Channel mapping: each spectral channel is scored on its own as a grey image (replicated to the
three input planes) in [-1, 1] normalised units, and the per-channel scores are averaged.  Invalid
pixels of the prediction take the target's value (no difference there) and tiles less than half
valid are skipped.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from pathlib import Path

import torch

from ..errors import InputError
from ..training.checkpoint import sha256, write_text_atomic

log = logging.getLogger(__name__)

BACKBONE_FILE = "alexnet-owt-7be5be79.pth"
OFFICIAL_SHA256_PREFIX = "7be5be79"  # torchvision names its files by the hash prefix
MANIFEST = "lpips_backbone.json"
# torchvision AlexNet ``features``: the conv layers (index -> weight shape) LPIPS uses
ALEXNET_CONVS = {0: (64, 3, 11, 11), 3: (192, 64, 5, 5), 6: (384, 192, 3, 3), 8: (256, 384, 3, 3), 10: (256, 256, 3, 3)}


def weights_dir(configured: str | None = None) -> Path:
    """Where staged weights live: the configured directory, else $CLOUDSR_WEIGHTS, else
    $TORCH_HOME/hub/checkpoints (torchvision's own cache, so both find the file)."""
    if configured:
        return Path(configured).expanduser()
    if os.environ.get("CLOUDSR_WEIGHTS"):
        return Path(os.environ["CLOUDSR_WEIGHTS"]).expanduser()
    torch_home = os.environ.get("TORCH_HOME", os.path.join(os.path.expanduser("~"), ".cache", "torch"))
    return Path(torch_home) / "hub" / "checkpoints"


class LPIPSUnavailable(RuntimeError):
    """No staged backbone (or one that fails its checksum): the metric is reported unavailable."""


def _features(state: dict, where: Path) -> dict[str, torch.Tensor]:
    """The AlexNet ``features.*`` tensors of a torchvision state dict, shape-checked."""
    if not isinstance(state, dict):
        raise InputError(f"{where}: not a state dict")
    feats = {}
    for i, shape in ALEXNET_CONVS.items():
        for part, shp in (("weight", shape), ("bias", shape[:1])):
            key = f"features.{i}.{part}"
            t = state.get(key)
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != shp:
                got = "missing" if t is None else tuple(getattr(t, "shape", ()))
                raise InputError(f"{where}: {key}: expected an AlexNet tensor of shape {shp}, got {got}")
            feats[key] = t
    return feats


def stage_backbone(source: str | Path, directory: str | Path | None = None, allow_unofficial: bool = False) -> dict:
    """Check and copy an AlexNet backbone into the weights directory; return its manifest."""
    source = Path(source)
    if not source.is_file():
        raise InputError(f"{source}: no such file")
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise InputError(f"{source}: not a torch weights file ({str(e).splitlines()[0][:120]})") from None
    _features(state, source)
    digest = sha256(source)
    official = digest.startswith(OFFICIAL_SHA256_PREFIX)
    if not official and not allow_unofficial:
        raise InputError(f"{source}: sha256 {digest[:12]}... is not torchvision's {BACKBONE_FILE} "
                         "(pass --allow-unofficial to stage it anyway; its LPIPS is then labelled unofficial)")
    out = weights_dir(str(directory) if directory else None)
    out.mkdir(parents=True, exist_ok=True)
    target = out / BACKBONE_FILE
    tmp = out / f".{BACKBONE_FILE}.tmp{os.getpid()}"
    try:
        shutil.copyfile(source, tmp)
        if sha256(tmp) != digest:
            raise InputError(f"{target}: copy does not match its source checksum")
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    manifest = {"file": BACKBONE_FILE, "sha256": digest, "official": official, "source": str(source.resolve())}
    write_text_atomic(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    log.info("staged the LPIPS backbone in %s (sha256 %s, %s)", out, digest[:12], "official" if official else "UNOFFICIAL")
    return manifest


def staging_hint(directory: Path) -> str:
    return (f"LPIPS unavailable: no AlexNet backbone staged in {directory}; on a machine with internet fetch "
            f"https://download.pytorch.org/models/{BACKBONE_FILE} and run "
            f"`python -m cloudsr_hpc.submit weights stage --from {BACKBONE_FILE}`")


class PerceptualMetric:
    """LPIPS-AlexNet v0.1 built from the package's linear heads and the staged backbone."""

    def __init__(self, directory: str | Path | None = None, device: str | torch.device = "cpu"):
        import lpips
        d = weights_dir(str(directory) if directory else None)
        path, man_path = d / BACKBONE_FILE, d / MANIFEST
        if not path.is_file() or not man_path.is_file():
            raise LPIPSUnavailable(staging_hint(d))
        manifest = json.loads(man_path.read_text())
        if sha256(path) != manifest.get("sha256"):
            raise LPIPSUnavailable(f"LPIPS unavailable: {path} does not match the checksum in {man_path} (stage it again)")
        feats = _features(torch.load(path, map_location="cpu", weights_only=True), path)
        # pnet_rand: torchvision builds an untrained AlexNet (nothing is downloaded); the staged
        # weights replace it below, so no random backbone ever scores anything
        with warnings.catch_warnings():  # torchvision's deprecation notes on ``pretrained=False``
            warnings.simplefilter("ignore", UserWarning)
            self.net = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False)
        slices = {0: "slice1.0", 3: "slice2.3", 6: "slice3.6", 8: "slice4.8", 10: "slice5.10"}
        own = {f"{slices[i]}.{part}": feats[f"features.{i}.{part}"] for i in ALEXNET_CONVS for part in ("weight", "bias")}
        self.net.net.load_state_dict(own, strict=True)
        self.net = self.net.to(device).eval()
        self.device = torch.device(device)
        self.sha256, self.official = manifest["sha256"], bool(manifest.get("official"))

    @property
    def label(self) -> str:
        return "LPIPS-AlexNet" + ("" if self.official else f" (UNOFFICIAL backbone {self.sha256[:8]})")

    @torch.no_grad()
    def per_channel(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                    min_valid: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of LPIPS over tiles, tiles counted) per channel for (N, C, H, W) tiles in [-1, 1]."""
        n, c = pred.shape[:2]
        keep = mask.mean(dim=(1, 2, 3)) >= min_valid
        sums, counts = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64)
        if not bool(keep.any()):
            return sums, counts
        t = torch.where(mask > 0, target, torch.zeros_like(target))
        p = torch.where(mask > 0, pred, t)[keep].clamp(-1, 1)
        t = t[keep].clamp(-1, 1)
        for ch in range(c):
            a = p[:, ch:ch + 1].expand(-1, 3, -1, -1).to(self.device)
            b = t[:, ch:ch + 1].expand(-1, 3, -1, -1).to(self.device)
            d = self.net(a, b).flatten().double().cpu()
            sums[ch], counts[ch] = d.sum(), d.numel()
        return sums, counts

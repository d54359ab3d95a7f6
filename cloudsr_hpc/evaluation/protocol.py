"""The comparison protocol: every method on the same inputs, scored by :class:`ScoreSums`.

Methods: bicubic, the regression UNet, Stage 1 only, Stage 2 only and the cascade.  Each takes
its input in the normalisation it was trained with (:meth:`Cascade.input_norm`) and is scored
in the HR normalisation, so a lone Stage 2 (trained on degraded HR-sensor values) and Stage 1
(trained on LR-sensor values) are each fed what they expect.

Two protocols:
  * held-out pairs (:func:`evaluate_pairs`): real (here synthetic) LR/HR pairs never trained on;
  * a scene (:func:`evaluate_scene`): any HR scene in canonical NetCDF is degraded with Stage 2's
    pipeline (position-keyed noise, fixed parameters drawn from the seed), super-resolved tile by
    tile and compared, streaming row bands: memory is the LR scene plus a few bands, whatever the
    HR size (a 3712 x 3712 scene needs no scene-sized array).

Ensembles (``members`` N > 1): each stochastic method (some stage samples) also draws members
1..N-1 (member 0 is the single sample, scored exactly as with N = 1); :class:`EnsembleSums` scores
the N members (CRPS, spread-skill, rank histogram) and the ensemble mean gets every measure of
:class:`ScoreSums` under the key ``<method>_ensemble_mean``.  Deterministic methods (bicubic, the
regression baseline) get their MAE, the CRPS of a deterministic forecast.  On a scene the members of
a tile are stitched as extra channels (:class:`MemberStack`), so memory grows with N times a band,
never N scenes.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import build
from ..core.norm import denormalise, normalise
from ..core.resources import peak_rss_mb
from ..data.degradations import Degradation
from ..errors import ConfigError, InputError
from ..models import calibration
from ..models.cascade import Cascade, Stage, channel_fill, upsample_condition
from ..models.diffusion import GlobalNoise
from ..schema import DegradationConfig, EvaluateConfig
from .scores import EnsembleSums, ScoreSums

log = logging.getLogger(__name__)

LABELS = {"bicubic": "Bicubic", "regression": "Regression UNet", "stage1": "Stage 1 only (cross-sensor)",
          "stage2": "Stage 2 only (structure)", "cascade": "Cascade: Stage 1 -> Stage 2 (ours)"}
ENSEMBLE_MEAN = "_ensemble_mean"  # score key of a method's ensemble mean: "cascade_ensemble_mean"


def method_label(name: str, members: int = 1) -> str:
    """The table label of a score key: LABELS, or "<label>, ensemble mean of N"."""
    if name.endswith(ENSEMBLE_MEAN):
        base = name[:-len(ENSEMBLE_MEAN)]
        return f"{LABELS.get(base, base)}, ensemble mean of {members}"
    return LABELS.get(name, name)


def spread_inflation(method):
    """The method's calibrated per-channel inflation, or None."""
    return getattr(method, "spread_inflation", None)


def ensemble_size(method, members: int) -> int:
    """Members drawn of a method: N for a stochastic one, 1 for a deterministic one (all equal)."""
    return members if getattr(method, "stochastic", False) else 1


class MemberStack:
    """A method whose output is its members 0..n-1 concatenated along the channel axis (n * C):
    the tile runner and the stitching treat them as channels, and blending is per channel, so each
    member is stitched exactly as it would be alone.  Everything else is the method's."""

    def __init__(self, method, n: int):
        self.method, self.n = method, n

    def __getattr__(self, key):
        return getattr(self.method, key)

    def __call__(self, lr, lr_mask, origins, member: int = 0):
        if member:
            raise ValueError("a MemberStack draws members 0..n-1 itself")
        outs = [self.method(lr, lr_mask, origins, member=k) for k in range(self.n)]
        return torch.cat([o[0] for o in outs], dim=1), outs[0][1]


class Bicubic:
    """Bicubic interpolation with the cascade's interface (no stages, nothing learned)."""
    stages = ()
    stochastic = False  # every ensemble member is the same

    def __init__(self, scale: int, norm, lr_channels: list[str], hr_channels: list[str]):
        self.scale, self.norm, self.lr_channels, self.hr_channels = scale, norm, lr_channels, hr_channels

    def input_norm(self):
        return self.norm

    output_norm = input_norm

    def receptive_margin_hr(self) -> int:
        return 2 * self.scale

    def describe(self) -> str:
        return "bicubic"

    def __call__(self, lr, lr_mask, origins, member: int = 0):
        """``member`` is accepted and ignored: every member of an interpolation is the same."""
        y, m = upsample_condition(lr, lr_mask, self.scale)
        return channel_fill(y, lr_mask, self.scale), m


def load_methods(cfg: EvaluateConfig, device="cpu") -> tuple[dict[str, Cascade], dict]:
    """{method: cascade-like} for ``cfg.methods`` (bicubic excluded) and the reference stage meta;
    ``evaluate.sampler`` (when set) replaces every diffusion stage's stored sampler."""
    needs = {"regression": ["regression"], "stage1": ["stage1"], "stage2": ["stage2"],
             "cascade": ["stage1", "stage2"]}
    stages: dict[str, Stage] = {}
    for key in sorted({s for m in cfg.methods for s in needs.get(m, [])}):
        path = Path(getattr(cfg, f"{key}_checkpoint"))
        if not path.is_file():
            raise ConfigError(f"evaluate.{key}_checkpoint: {path} does not exist (needed by methods "
                              f"{cfg.methods})")
        stages[key] = Stage.load(path, device, expect={"stage1": 1, "stage2": 2}.get(key, key),
                                 key=f"evaluate.{key}_checkpoint", sampler=cfg.sampler,
                                 sampler_key="evaluate.sampler")
    if not stages:
        raise ConfigError("evaluate.methods: at least one learned method is needed (bicubic alone has no "
                          "model metadata)")
    methods = {m: Cascade([stages[s] for s in needs[m]], seed=cfg.seed)
               for m in cfg.methods if m != "bicubic"}
    if cfg.calibration:
        attach_calibration(methods, cfg)
    ref = next(iter(stages.values())).meta
    if len({(tuple(c.hr_channels), c.scale) for c in methods.values()}) != 1:
        raise InputError("evaluate: the checkpoints disagree on channels or scale")
    return methods, ref


def attach_calibration(methods: dict[str, Cascade], cfg: EvaluateConfig) -> None:
    """Spread inflation of ``evaluate.calibration`` on each stochastic method it was fitted for;
    a file that fits none of them is refused (it was made for other models or another sampler)."""
    if cfg.members < 2:
        raise ConfigError(f"evaluate.calibration: {cfg.calibration} inflates ensemble spread; it needs "
                          "evaluate.members >= 2")
    fitted = calibration.load(cfg.calibration)
    hits = []
    for name, meth in methods.items():
        match = calibration.find(fitted, meth)
        if match is not None and meth.stochastic:
            meth.spread_inflation = match.factors()
            hits.append(name)
    if not hits:
        stochastic = [m for m, c in methods.items() if c.stochastic]
        raise InputError(f"evaluate.calibration: {cfg.calibration} fits none of {stochastic} (fitted for "
                         f"other exports or another sampler)")
    log.info("spread calibration %s applied to %s", cfg.calibration, ", ".join(hits))


def renorm(x, src, dst):
    """Normalised values from one (lo, hi) normalisation to another, per channel (axis -3)."""
    lo_s, hi_s = (np.asarray(v, np.float64) for v in src)
    lo_d, hi_d = (np.asarray(v, np.float64) for v in dst)
    a = (hi_s - lo_s) / (hi_d - lo_d)
    b = (lo_s + (hi_s - lo_s) / 2 - (lo_d + (hi_d - lo_d) / 2)) * 2 / (hi_d - lo_d)
    shape = (-1, 1, 1)
    if isinstance(x, torch.Tensor):
        return (x * torch.as_tensor(a, dtype=x.dtype).view(shape)
                + torch.as_tensor(b, dtype=x.dtype).view(shape))
    x = x * a.astype(np.float32).reshape(shape)  # float32 throughout: an LR disk is 275 MB per copy
    x += b.astype(np.float32).reshape(shape)
    return x


@dataclass
class Evaluation:
    """Scores of each method, and what the plots need."""
    protocol: str
    channels: list[str]
    scale: int
    scores: dict[str, dict] = field(default_factory=dict)
    spectra: dict[str, tuple] = field(default_factory=dict)  # method -> (k, SR PSD, HR PSD)
    example: dict[str, np.ndarray] = field(default_factory=dict)  # "lr", "hr", methods: physical (C, h, w)
    units: list[str] = field(default_factory=list)
    lpips_label: str | None = None
    lpips_note: str | None = None
    info: dict = field(default_factory=dict)
    members: int = 1  # ensemble size of the stochastic methods
    ensemble: dict[str, dict] = field(default_factory=dict)  # method -> EnsembleSums.result()
    calibration: dict[str, dict] = field(default_factory=dict)  # method -> {channel: spread inflation}


def _hr_quantities(registry, pair_name: str, channels: list[str]) -> tuple[list[str], list[str]]:
    sensor = registry.sensor(registry.pair(pair_name).hr)
    return [sensor.channel(c).quantity for c in channels], [sensor.channel(c).units for c in channels]


def _finish(ev: Evaluation, sums: dict[str, ScoreSums],
            ens: dict[str, EnsembleSums] | None = None) -> Evaluation:
    for name, s in sums.items():
        ev.scores[name] = s.result()
        ev.spectra[name] = s.spectra()
    for name, e in (ens or {}).items():
        ev.ensemble[name] = e.result()
    return ev


def _score_sums(cfg: EvaluateConfig, all_methods: dict, make_sums, chans, quantities, norm, units
                ) -> tuple[dict[str, ScoreSums], dict[str, EnsembleSums], dict[str, int]]:
    """ScoreSums per method (and, N > 1, per stochastic method's ensemble mean, right after it),
    EnsembleSums per method when N > 1, and the members each method draws."""
    sums, ens, sizes = {}, {}, {}
    for name, meth in all_methods.items():
        sizes[name] = ensemble_size(meth, cfg.members)
        sums[name] = make_sums()
        if cfg.members > 1:
            if sizes[name] > 1:
                sums[name + ENSEMBLE_MEAN] = make_sums()
            ens[name] = EnsembleSums(chans, quantities, norm, sizes[name], cfg.seed, units)
    return sums, ens, sizes


def _info_members(ev: Evaluation, cfg: EvaluateConfig, sizes: dict[str, int], methods: dict) -> None:
    if cfg.members > 1:
        ev.members = cfg.members
        ev.info["members"] = cfg.members
        ev.calibration = {name: dict(zip(m.hr_channels, map(float, spread_inflation(m)), strict=True))
                          for name, m in methods.items() if spread_inflation(m) is not None}
        log.info("ensembles of %d members: %s", cfg.members,
                 [m for m, k in sizes.items() if k > 1] or "no stochastic method")


def training_degradation(methods: dict) -> DegradationConfig:
    """The degradation the models learned from: Stage 2's when one is evaluated, else the first
    stage's (the regression of a single-sensor pair trains on degraded HR too), else the default."""
    stages = [st for m in methods.values() for st in m.stages]
    ref = next((st for st in stages if st.meta.get("stage") == 2), stages[0] if stages else None)
    return build(DegradationConfig, ref.meta.get("config", {}).get("data", {}).get("degradation", {})
                 if ref else {}, "degradation")


def held_out_dataset(cfg: EvaluateConfig, methods: dict):
    """The held-out split: real LR/HR pairs, or (a single-sensor pair's ``hr`` shards) HR patches
    degraded as in training, with a fixed epoch so every run scores the same LR."""
    from ..data.datasets import DegradedHRDataset, PairDataset
    if any(Path(cfg.pairs).glob("pairs-*.h5")):
        return PairDataset(cfg.pairs)
    return DegradedHRDataset(cfg.pairs, training_degradation(methods), epoch=0)


def evaluate_pairs(cfg: EvaluateConfig, methods: dict, registry, perceptual=None) -> Evaluation:
    """Held-out pairs: each method against the HR truth, batch by batch."""
    val = held_out_dataset(cfg, methods)
    norm_lr, norm_hr = (val.lo_lr, val.hi_lr), (val.lo, val.hi)
    chans = list(val.attrs["hr_channels"])
    first = next(iter(methods.values()))
    if first.hr_channels != chans or first.scale != val.scale:
        raise InputError(f"{cfg.pairs}: pairs of {chans} x{val.scale}, the models give {first.hr_channels} "
                         f"x{first.scale}")
    quantities, units = _hr_quantities(registry, val.attrs["pair"], chans)
    all_methods = ({"bicubic": Bicubic(val.scale, norm_hr, first.lr_channels, chans)}
                   if "bicubic" in cfg.methods else {})
    all_methods.update(methods)
    sums, ens, sizes = _score_sums(cfg, all_methods,
                                   lambda: ScoreSums(chans, quantities, norm_hr, val.scale, cfg, perceptual),
                                   chans, quantities, norm_hr, units)
    n = min(len(val), cfg.max_pairs) if cfg.max_pairs else len(val)
    # the most structured pair
    ex = int(np.argmax([float(val[i]["hr"][-1].std()) for i in range(min(n, 256))]))
    ev = Evaluation("held-out pairs", chans, val.scale, units=units,
                    info={"pairs": n, "source": str(cfg.pairs)})
    _info_members(ev, cfg, sizes, all_methods)
    for start in range(0, n, cfg.batch_size):
        idx = list(range(start, min(n, start + cfg.batch_size)))
        b = {k: torch.stack([val[i][k] for i in idx]) for k in ("lr", "lr_mask", "hr", "hr_mask")}
        origins = [(i * 1000, 0) for i in idx]  # keys each pair's diffusion noise
        for name, meth in all_methods.items():
            x = renorm(b["lr"], norm_lr, meth.input_norm()) * b["lr_mask"]
            pred, m = meth(x, b["lr_mask"], origins)
            pred = renorm(pred, meth.output_norm(), norm_hr)
            sums[name].add(pred.nan_to_num(), b["hr"], m * b["hr_mask"] * pred.isfinite())
            if name in ens:  # member 0 is the sample just scored; members 1..N-1 drawn here
                members = torch.stack([pred] + [renorm(meth(x, b["lr_mask"], origins, member=k)[0],
                                                       meth.output_norm(), norm_hr)
                                                for k in range(1, sizes[name])])
                members = calibration.inflate(members, spread_inflation(meth), 2)
                ens[name].add(members, b["hr"], m * b["hr_mask"])
                if sizes[name] > 1:
                    mean = members.mean(0)
                    sums[name + ENSEMBLE_MEAN].add(mean.nan_to_num(), b["hr"],
                                                   m * b["hr_mask"] * mean.isfinite())
            if ex in idx:
                ev.example[name] = denormalise(pred[idx.index(ex)].numpy(), *norm_hr)
        if ex in idx:
            j = idx.index(ex)
            ev.example["lr"] = denormalise(b["lr"][j].numpy(), *norm_lr)
            ev.example["hr"] = np.where(b["hr_mask"][j].numpy() > 0,
                                        denormalise(b["hr"][j].numpy(), *norm_hr), np.nan)
        log.info("evaluated %d/%d pairs", idx[-1] + 1, n)
    return _finish(ev, sums, ens)


# --------------------------------------------------------------------------- scene protocol
def bound_chunk_cache(nc, channels: list[str]) -> None:
    """HDF5 keeps up to 64 MB of decompressed chunks per variable by default, which grows with the
    rows read; two rows of chunks suffice for bands read top to bottom (each chunk inflated once)."""
    for c in channels:
        var = nc[c]
        chunks = var.chunking()
        if isinstance(chunks, list):
            ch, cw = chunks
            per_row = -(-var.shape[1] // cw) * ch * cw * var.dtype.itemsize
            var.set_var_chunk_cache(size=2 * per_row)


def _read_rows(nc, channels: list[str], a: int, b: int, width: int, norm) -> tuple[np.ndarray, np.ndarray]:
    """Normalised HR rows [a, b) (C, b - a, width), NaN where a channel is invalid, and the pixel
    validity (b - a, width): any channel valid."""
    vals = np.stack([np.ma.filled(nc[c][a:b, :width].astype(np.float32), np.nan) for c in channels])
    return normalise(vals, *norm, out=vals)


def degrade_scene(nc, channels, shape_hr, norm, dcfg: DegradationConfig, scale: int, seed: int, band: int):
    """Stage 2's degradation of the whole HR scene, band by band: (normalised LR with NaN where a
    channel is invalid, LR pixel validity, params).
    Bands carry halo rows covering the PSF and shift, and the noise is keyed by LR position, so the
    LR does not depend on the band size."""
    h, w = shape_hr
    deg = Degradation(dcfg, scale)
    params = deg.draw(torch.Generator().manual_seed(seed))
    reach = math.ceil(3 * params["sigma_lr"] * scale + abs(params["dy_lr"]) * scale) + 1
    # whole 8-LR-pixel blocks: JPEG blocks stay on the global grid
    halo = -(-reach // (8 * scale)) * 8 * scale
    lr = np.zeros((len(channels), h // scale, w // scale), np.float32)
    valid = np.zeros((h // scale, w // scale), bool)
    noise = GlobalNoise(seed * 16 + 15)
    for a in range(0, h, band):
        b = min(h, a + band)
        a0, b0 = max(0, a - halo), min(h, b + halo)
        x, _ = _read_rows(nc, channels, a0, b0, w, norm)
        eps = noise.field(0, len(channels), a0 // scale, 0, (b0 - a0) // scale, w // scale)
        r, n = (a - a0) // scale, (b - a) // scale
        for c in range(len(channels)):  # channel by channel: the band's temporaries stay small
            vm = torch.from_numpy(np.isfinite(x[c:c + 1]).astype(np.float32))
            out, m, _ = deg(torch.from_numpy(np.nan_to_num(x[c:c + 1])), vm, None, params, eps[c:c + 1])
            ok = m[0, r:r + n].numpy() > 0
            lr[c, a // scale:b // scale] = np.where(ok, out[0, r:r + n].numpy(), np.nan)
            valid[a // scale:b // scale] |= ok
    return lr, valid, params


def with_halo(blocks: Iterator[tuple[int, np.ndarray]],
              halo: int) -> Iterator[tuple[int, np.ndarray, tuple[int, int]]]:
    """(first row, (C, n, W)) blocks in order -> (first row of the joined block, the block with up
    to ``halo`` rows of its neighbours above and below, the rows it owns (a, b) within it)."""
    prev, above = None, None
    for row, blk in blocks:
        if prev is not None:
            yield _join(above, prev, blk[:, :halo])
            above = prev[1][:, -halo:]
        prev = (row, blk)
    if prev is not None:
        yield _join(above, prev, None)


def _join(above, prev, below):
    row, blk = prev
    parts = [p for p in (above, blk, below) if p is not None]
    top = 0 if above is None else above.shape[1]
    return row - top, np.concatenate(parts, axis=1), (top, top + blk.shape[1])


def evaluate_scene(cfg: EvaluateConfig, methods: dict, ref_meta: dict, registry, hr_path: str | Path,
                   scale: int | None = None, perceptual=None) -> Evaluation:
    """Self-supervised protocol on one HR scene in canonical NetCDF (see the module docstring)."""
    import netCDF4

    from ..inference.quicklook import busiest_window
    from ..inference.runner import TileRunner, pick_device
    from ..inference.tiling import blend_geometry, plan_tiles, stitch_rows
    hr_path = Path(hr_path)
    first = next(iter(methods.values()))
    chans, s = first.hr_channels, first.scale
    if scale is not None and scale != s:
        raise InputError(f"--scale {scale}: the checkpoints super-resolve x{s}")
    norm = tuple(ref_meta["norm_hr"])
    dcfg = training_degradation(methods)
    if cfg.band_rows % (8 * s):
        raise ConfigError(f"evaluate.band_rows: {cfg.band_rows} must be a multiple of 8 x scale = {8 * s}")
    if cfg.cpu_threads > 0:
        torch.set_num_threads(cfg.cpu_threads)
    device = pick_device()
    try:
        nc = netCDF4.Dataset(hr_path)
    except OSError as e:
        raise InputError(f"{hr_path}: not a readable NetCDF file ({e})") from None
    with nc:
        want = registry.pair(cfg.pair).hr
        have = getattr(nc, "sensor", want)
        if have != want:
            raise InputError(f"{hr_path}: a scene of sensor '{have}', the {cfg.pair} models "
                             f"super-resolve to {want}")
        missing = [c for c in chans if c not in nc.variables]
        if missing:
            raise InputError(f"{hr_path}: channels {missing} missing (the models need {chans})")
        shapes = {nc[c].shape for c in chans}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise InputError(f"{hr_path}: channels must be 2-D on one grid, got shapes {sorted(shapes)}")
        h0, w0 = next(iter(shapes))
        bound_chunk_cache(nc, chans)
        h, w = h0 // (8 * s) * 8 * s, w0 // (8 * s) * 8 * s  # whole LR pixels and JPEG blocks
        if h == 0 or w == 0:
            raise InputError(f"{hr_path}: {h0}x{w0} is smaller than one {8 * s}-pixel block")
        quantities, units = _hr_quantities(registry, cfg.pair, chans)
        lr, lr_valid, params = degrade_scene(nc, chans, (h, w), norm, dcfg, s, cfg.seed, cfg.band_rows)
        log.info("degraded %dx%d HR -> LR with %s; peak RSS %d MB", h, w, params, peak_rss_mb())
        if not lr_valid.any():
            raise InputError(f"{hr_path}: no valid pixel in channels {chans}")
        zoom = min(32, h // s, w // s)
        zr, zc = busiest_window(np.where(lr_valid, lr[-1], np.nan), zoom)
        hz = (slice(zr * s, (zr + zoom) * s), slice(zc * s, (zc + zoom) * s))
        ev = Evaluation("self-supervised scene", chans, s, units=units,
                        info={"source": str(hr_path), "shape_hr": [h, w],
                              "degradation": {k: round(v, 4) for k, v in params.items()}})
        ev.example["lr"] = np.where(lr_valid[zr:zr + zoom, zc:zc + zoom],
                                    denormalise(lr[:, zr:zr + zoom, zc:zc + zoom], *norm), np.nan)
        hr_zoom, hv = _read_rows(nc, chans, hz[0].start, hz[0].stop, w, norm)
        ev.example["hr"] = np.where(hv[:, hz[1]], denormalise(hr_zoom[:, :, hz[1]], *norm), np.nan)
        all_methods = ({"bicubic": Bicubic(s, norm, first.lr_channels, chans)}
                       if "bicubic" in cfg.methods else {})
        all_methods.update(methods)
        tiles = plan_tiles(lr_valid, cfg.tile_lr, cfg.overlap_lr)
        tile_rows = max(t.rows for t in tiles)
        sums, ens, sizes = _score_sums(cfg, all_methods,
                                       lambda: ScoreSums(chans, quantities, norm, s, cfg, perceptual),
                                       chans, quantities, norm, units)
        _info_members(ev, cfg, sizes, all_methods)
        nc_ = len(chans)
        for name, meth in all_methods.items():
            sc, k = sums[name], sizes[name]
            # members 0..k-1 of each tile stitched as k x C channels: every member blended as alone
            runner = TileRunner(MemberStack(meth, k) if k > 1 else meth, device, cfg.batch_size)
            blend = blend_geometry(cfg.overlap_lr * s, meth.receptive_margin_hr())
            x = renorm(lr, norm, meth.input_norm())
            stream = stitch_rows(runner.run(x, tiles), lr_valid.shape, s, blend, nc_ * k, 0, h,
                                 cfg.band_rows, tile_rows)
            zoom_rows = np.full((len(chans), zoom * s, zoom * s), np.nan, np.float32)
            for row, blk_all, (ta, tb) in with_halo(stream, sc.halo):
                blk = blk_all[:nc_]  # member 0: the single sample
                hr, _ = _read_rows(nc, chans, row, row + blk.shape[1], w, norm)
                pred = renorm(np.nan_to_num(blk), meth.output_norm(), norm)
                mask = (np.isfinite(hr) & np.isfinite(blk)).astype(np.float32)  # per channel
                hr_t = torch.from_numpy(np.nan_to_num(hr))[None]
                sc.add(torch.from_numpy(pred)[None], hr_t, torch.from_numpy(mask)[None], (ta, tb))
                if name in ens:
                    members = calibration.inflate(
                        renorm(blk_all.reshape(k, nc_, *blk.shape[1:]), meth.output_norm(), norm),  # NaN kept
                        spread_inflation(meth), 1)
                    hr_ok = np.isfinite(hr)
                    ens[name].add(torch.from_numpy(members)[:, None], hr_t,
                                  torch.from_numpy(hr_ok.astype(np.float32))[None], (ta, tb))
                    if k > 1:
                        mean = members.mean(0)
                        sums[name + ENSEMBLE_MEAN].add(
                            torch.from_numpy(np.nan_to_num(mean))[None], hr_t,
                            torch.from_numpy((hr_ok & np.isfinite(mean)).astype(np.float32))[None], (ta, tb))
                    del members
                lo_r, hi_r = max(row + ta, hz[0].start), min(row + tb, hz[0].stop)
                if lo_r < hi_r:
                    zoom_rows[:, lo_r - hz[0].start:hi_r - hz[0].start] = np.where(
                        mask[:, lo_r - row:hi_r - row, hz[1]] > 0, pred[:, lo_r - row:hi_r - row, hz[1]],
                        np.nan)
            ev.example[name] = denormalise(zoom_rows, *norm)
            log.info("scored %s over %dx%d HR pixels; peak RSS %d MB", name, h, w, peak_rss_mb())
        ev.info["peak_rss_mb"] = peak_rss_mb()
    return _finish(ev, sums, ens)

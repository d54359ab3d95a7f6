"""One scene through the cascade: read -> normalise -> tiles -> rank bands -> stitched CF file.

Sharding: the output rows are cut into bands that start on chunk rows, one per rank, balanced by
the tiles' cost (every tile costs one batch slot, spread over its rows).  The tile plan is global
and fixed; a rank blends every tile that touches its band and keeps only its rows.  A tile
straddling a boundary is computed once, by the rank of the band below it, and sent to the other
(:mod:`.halo`).  Each output pixel therefore gets the same tiles, computed in the same batch
shape, summed in the same order, whatever the number of ranks.

Memory per rank is bounded by a rolling window, not by the band: tiles come in row order, rows
above the current tile row are final, and finished chunk rows are written and dropped at once.
A rank holds (tile + chunk) HR rows of the accumulator plus the LR scene (1/scale^2 of the output).
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from .. import __version__
from ..config import dump_yaml
from ..core import signals
from ..core.files import sha256
from ..core.norm import denormalise, normalise
from ..core.resources import peak_rss_mb
from ..core.timing import StageClock
from ..data.geometry import GeosGrid
from ..data.scene import channel_attrs, history_line, read_scene, scene_grid, scene_time
from ..data.sensors import Registry
from ..errors import CloudSRError, ConfigError, InputError, Interrupted, OutputError, one_line
from ..models.calibration import attach
from ..models.cascade import Cascade, Stage
from ..schema import InferConfig
from .halo import PeerStopped, TileExchange, TilePlan, share_tiles
from .mpi import Ranks
from .quicklook import quicklook_views, sr_quicklook
from .runner import TileRunner, auto_batch_size, pick_device
from .tiling import Blend, Tile, blend_geometry, plan_tiles, stitch_rows
from .writer import (
    BandSink,
    OutputClaim,
    OutputSpec,
    claim_output,
    create_output,
    merge_part,
    publish,
    record_chunk_index,
    variable_names,
    verify_chunks,
)

log = logging.getLogger(__name__)
AUTO_CPU_BATCH = 8  # infer.batch_size 0 on a CPU


# ----------------------------------------------------------------------------- model and input
STAGE_KEYS = {"1": [("stage1_checkpoint", 1)], "2": [("stage2_checkpoint", 2)],
              "cascade": [("stage1_checkpoint", 1), ("stage2_checkpoint", 2)],
              "regression": [("regression_checkpoint", "regression")]}


def checkpoints_for(cfg: InferConfig) -> list[str]:
    return [getattr(cfg, key) for key, _ in STAGE_KEYS[cfg.stages]]


def load_cascade(cfg: InferConfig, device="cpu") -> Cascade:
    """The configured stages, each checked to be the stage its key names (export meta records it);
    ``infer.sampler`` (when set) replaces every diffusion stage's stored sampler."""
    return Cascade([Stage.load(getattr(cfg, key), device, expect=stage, key=f"infer.{key}",
                               sampler=cfg.sampler, sampler_key="infer.sampler")
                    for key, stage in STAGE_KEYS[cfg.stages]], seed=cfg.seed)


@dataclass
class LRScene:
    values: np.ndarray  # (C, H, W) physical units, NaN invalid
    grid: GeosGrid
    time: dt.datetime
    sensor: str
    files: list[str]
    sha256: list[str] = field(default_factory=list)


def read_input(files: list[str | Path], registry: Registry, sensor_name: str, channels: list[str]) -> LRScene:
    """An LR scene from a canonical NetCDF scene or from the sensor's own files (through satpy)."""
    from ..data.index import identify, parsers
    from ..data.readers import read_files
    paths = [Path(f) for f in files]
    for p in paths:
        if not p.exists():
            raise InputError(f"{p}: no such file")
    hits = [identify(p.name, parsers(registry)) for p in paths]
    if all(h is not None for h in hits):
        sensors = {h[0].name for h in hits}
        if sensors != {sensor_name}:
            raise InputError(f"{paths[0]}: {'/'.join(sorted(sensors))} files, but the model takes "
                             f"{sensor_name}")
        ds = read_files(paths, registry.sensor(sensor_name), sorted({h[1] for h in hits}), channels)
    elif len(paths) == 1:
        ds = read_scene(paths[0], channels)
        if ds.attrs.get("sensor") != sensor_name:
            raise InputError(f"{paths[0]}: scene of sensor '{ds.attrs.get('sensor')}', the model takes "
                             f"{sensor_name}")
    else:
        bad = next(p for p, h in zip(paths, hits, strict=True) if h is None)
        raise InputError(f"{bad}: not a recognised {sensor_name} file name (and several files given)")
    grid = scene_grid(ds)
    if grid is None:
        raise InputError(f"{paths[0]}: not a geostationary scene (inference runs on the LR disk grid)")
    values = np.stack([ds[c].values.astype(np.float32, copy=False) for c in channels])
    t = scene_time(ds)
    del ds  # the stacked copy is all that is kept
    return LRScene(values, grid, t, sensor_name, [p.name for p in paths], [sha256(p) for p in paths])


def output_name(pair: str, stages: str, t: dt.datetime, members: int = 1) -> str:
    """``cloudsr_<pair>_<stages>[_ens<N>]_<time>.nc``: an ensemble never takes a single sample's name."""
    ens = f"_ens{members}" if members > 1 else ""
    return f"cloudsr_{pair}_{stages}{ens}_{t:%Y%m%dT%H%M%S}.nc"


def band_planes(block: np.ndarray, spec: OutputSpec, lo, hi) -> np.ndarray:
    """Stitched normalised planes (:attr:`OutputSpec.planes` order; an ensemble's second group is
    the variance) -> physical values; the standard deviation scales by the range only."""
    c = len(spec.channels)
    if spec.members == 1:
        return denormalise(block, lo, hi)
    half = (np.asarray(hi, np.float32) - np.asarray(lo, np.float32))[:, None, None] / 2
    groups = [denormalise(block[:c], lo, hi), np.sqrt(np.maximum(block[c:2 * c], 0.0)) * half]
    groups += [denormalise(block[k:k + c], lo, hi) for k in range(2 * c, block.shape[0], c)]
    return np.concatenate(groups).astype(np.float32)


# ----------------------------------------------------------------------------- sharding
def partition_bands(row_weight: np.ndarray, chunk: int, total: int, n: int) -> list[tuple[int, int]]:
    """Split [0, total) HR rows into ``n`` contiguous bands starting on chunk rows (one weight per
    chunk row in ``row_weight``) so that the heaviest band is as light as it can be: bisection on
    that bound, each band filled greedily up to it.  Bands may be empty when n exceeds the chunk
    rows (or one chunk row holds all the work)."""
    w = np.asarray(row_weight, float)

    def cuts_within(cap: float) -> list[int]:
        cuts, load = [0], 0.0
        for i, x in enumerate(w):
            if load + x > cap and i > cuts[-1]:
                cuts.append(i)
                load = 0.0
            load += x
        return cuts

    lo, hi = w.max(initial=0.0), w.sum()
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if len(cuts_within(mid)) <= n else (mid, hi)
    cuts = cuts_within(hi)
    cuts += [len(w)] * (n + 1 - len(cuts))
    return [(min(a * chunk, total), min(b * chunk, total)) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


def chunk_row_cost(tiles: list[Tile], scale: int, chunk: int, total: int) -> np.ndarray:
    """The work of each chunk row of the output: every tile costs the same (one slot of a fixed
    batch shape, whatever share of it is valid) and is computed by the band holding its last row
    (:func:`.halo.share_tiles`), so it counts in the chunk row of its last HR row.  (Valid pixels
    are a poor proxy: near the disk's poles a tile holding a sliver of Earth costs a full one.)"""
    last = np.array([min((t.row0 + t.rows) * scale, total) - 1 for t in tiles], int)
    return np.bincount(last // chunk, minlength=-(-total // chunk)).astype(float)


def band_tiles(tiles: list[Tile], scale: int, a: int, b: int) -> list[Tile]:
    """Tiles whose HR rows touch [a, b)."""
    return [t for t in tiles if t.touches_rows(scale, a, b)]


# ----------------------------------------------------------------------------- the pipeline
@dataclass
class SceneResult:
    path: Path
    tiles: int
    seconds: dict
    ranks: int
    peak_rss_mb: list = field(default_factory=list)  # per rank (process peak)
    compute_s: list = field(default_factory=list)  # per rank: its band's tiles, blending and writing
    rank_tiles: list = field(default_factory=list)  # per rank: the tiles it computed (shared ones once)
    record: dict = field(default_factory=dict)  # {"size", "sha256"} of the published file (rank 0)
    # per rank: seconds per stage (read, normalise, scatter, cut, h2d, model, d2h, ensemble, blend,
    # denormalise, compress (thread-seconds), wait_compress, write, wait (for other ranks), merge)
    stages_s: list = field(default_factory=list)


class ScenePipeline:
    """Super-resolves scenes with one cascade over the given ranks (see the module docstring)."""

    def __init__(self, cfg: InferConfig, registry: Registry, ranks: Ranks, out_dir: str | Path,
                 cascade: Cascade | None = None, progress: bool = True):
        self.cfg, self.reg, self.ranks, self.progress = cfg, registry, ranks, progress
        self.out_dir = Path(out_dir).resolve()
        self.pair = registry.pair(cfg.pair)
        self.device = pick_device(ranks.local_rank)
        if cfg.cpu_threads > 0:  # CPU kernels partition work by thread count: fix it for bitwise results
            import torch
            torch.set_num_threads(cfg.cpu_threads)
        self.cascade = cascade or load_cascade(cfg, self.device)
        self.scale = self.cascade.scale
        if cfg.chunk % self.scale:
            raise ConfigError(f"infer.chunk: {cfg.chunk} must be a multiple of the model's scale "
                              f"{self.scale}")
        if self.cascade.lr_channels != self.pair.lr_channels:
            raise InputError(f"{checkpoints_for(cfg)[0]}: model channels {self.cascade.lr_channels} "
                             f"differ from pair {self.pair.name}'s {self.pair.lr_channels}")
        if self.cascade.scale != self.pair.scale:
            raise InputError(f"{checkpoints_for(cfg)[0]}: model scale x{self.scale}, pair {self.pair.name} "
                             f"is x{self.pair.scale}")
        if cfg.members > 1 and not self.cascade.stochastic:
            raise ConfigError(f"infer.members: {cfg.members} members of a deterministic model ({cfg.stages}) "
                              "would all be equal; use 1")
        self.calibration = self._calibration()
        self.runner = TileRunner(self.cascade, self.device, cfg.batch_size or AUTO_CPU_BATCH, cfg.precision,
                                 cfg.compile, cfg.members, cfg.keep_members)
        if cfg.batch_size == 0:
            self.runner.batch_size = self._auto_batch()
        self.blend = self._blend()

    def _calibration(self) -> dict:
        """Output attributes of the spread calibration (``infer.calibration``), attached to the cascade."""
        if not self.cfg.calibration:
            return {}
        if self.cfg.members < 2:
            raise ConfigError(f"infer.calibration: {self.cfg.calibration} inflates ensemble spread; it needs "
                              "infer.members >= 2 (a single member has no mean to inflate about)")
        cal = attach(self.cascade, self.cfg.calibration, "infer.calibration")
        return {"ensemble_spread_inflation": " ".join(f"{c}={a:.4g}" for c, a in
                                                      zip(cal.channels, cal.inflation, strict=True)),
                "ensemble_calibration": f"{Path(self.cfg.calibration).resolve()} sha256:"
                                        f"{sha256(self.cfg.calibration)}"}

    def _auto_batch(self) -> int:
        """``infer.batch_size: 0``: on a GPU the tiles that fit 80 % of its free memory (one tile's
        peak measured through the cascade), on a CPU :data:`AUTO_CPU_BATCH`; the smallest over the
        ranks, since the batch shape is part of what makes outputs equal whatever the rank count."""
        b = AUTO_CPU_BATCH
        if self.device.type == "cuda":
            import torch
            free, _ = torch.cuda.mem_get_info(self.device)
            b = auto_batch_size(free, self.runner.tile_bytes(self.cfg.tile_lr, len(self.pair.lr_channels)))
        every = self.ranks.gather(b)
        b = self.ranks.bcast(min(every) if self.ranks.rank == 0 else None)
        if self.ranks.rank == 0:
            log.info("batch size %d tiles (infer.batch_size 0: chosen for %s)", b, self.device)
        return b

    def _blend(self) -> Blend:
        overlap_hr = self.cfg.overlap_lr * self.scale
        if self.cfg.halo_hr >= 0:
            halo = min(self.cfg.halo_hr, overlap_hr // 2)
            return Blend(halo, overlap_hr - 2 * halo, False)
        margin = self.ranks.bcast(self.cascade.receptive_margin_hr() if self.ranks.rank == 0 else None)
        blend = blend_geometry(overlap_hr, margin)
        if self.ranks.rank == 0:
            log.info("receptive margin %d HR px, overlap %d: halo %d + Hann ramp %d (%s)", margin, overlap_hr,
                     blend.halo, blend.ramp, "exact tiling" if blend.exact else
                     f"approximate; overlap_lr >= {-(-2 * margin // self.scale)} makes it exact")
        return blend

    # -- helpers
    def output_path(self, t: dt.datetime) -> Path:
        path = (self.out_dir / output_name(self.pair.name, self.cfg.stages, t, self.cfg.members)).resolve()
        if path.parent != self.out_dir:
            raise OutputError(f"{path}: outside the configured output root {self.out_dir}")
        return path

    def spec(self, scene: LRScene, extra: dict) -> OutputSpec:
        hr_sensor = self.reg.sensor(self.pair.hr)
        chans = self.cascade.hr_channels
        lo, hi = self.cascade.output_norm()
        # room for values beyond the training range
        pad = [(b - a) * 0.25 for a, b in zip(lo, hi, strict=True)]
        attrs = {
            "Conventions": "CF-1.10",
            "title": f"{self.pair.lr} -> {self.pair.hr} super-resolution (cloudsr-hpc)",
            "institution": "cloudsr-hpc", "source": f"cloudsr-hpc {__version__} {self.cascade.describe()}",
            "history": history_line(f"super-resolved {';'.join(scene.files)} x{self.scale} "
                                    f"({self.cfg.stages})"),
            "sensor": self.pair.hr, "source_sensor": scene.sensor, "platform": "",
            "start_time": scene.time.isoformat(), "source_files": ";".join(scene.files),
            "source_sha256": ";".join(scene.sha256), "scale": self.scale, "stages": self.cfg.stages,
            "model_checkpoints": ";".join(str(Path(p).resolve()) for p in checkpoints_for(self.cfg)),
            "model_sha256": ";".join(st.meta.get("sha256", "") for st in self.cascade.stages),
            "infer_config": dump_yaml(self.cfg), "cloudsr_hpc_version": __version__,
            "ensemble_members": self.cfg.members, "ensemble_keep_members": int(self.cfg.keep_members),
            **self.calibration,
            "date_created": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
            **{k: v for k, v in scene.grid.scaled(self.scale).to_attrs().items()}, **extra}
        return OutputSpec(chans, {c: channel_attrs(hr_sensor, c) for c in chans},
                          scene.grid.scaled(self.scale), self.cfg.chunk, self.cfg.packing, self.cfg.complevel,
                          {c: (a - p, b + p) for c, a, b, p in zip(chans, lo, hi, pad, strict=True)}, attrs,
                          self.cfg.members, self.cfg.keep_members, self.cfg.deflate)

    # -- one scene
    def run(self, files: list[str | Path] | None, slot: dt.datetime | None = None) -> SceneResult:
        """Super-resolve the scene in ``files`` (read on rank 0, broadcast); every rank calls this.
        The output is named after the nominal ``slot`` when given (archive scenes), else after the
        scene's start time."""
        r = self.ranks
        t0 = time.perf_counter()
        clock = self.runner.clock = StageClock()
        scene, err = None, None
        if r.rank == 0:
            try:
                with clock("read"):
                    scene = read_input(files, self.reg, self.pair.lr, self.pair.lr_channels)
            except Exception as e:  # noqa: BLE001 - every rank must hear of it, not wait in a collective
                err = _message(e, files[0] if files else "input")
        with clock("wait"):
            err = r.agree(err)
        self._fail_if(err, InputError)
        meta = r.bcast(None if scene is None else {k: v for k, v in scene.__dict__.items() if k != "values"})
        lr = valid = views = None
        if r.rank == 0:
            if self.cfg.quicklook:
                views = quicklook_views(scene.values)  # small: taken before normalising in place
            with clock("normalise"):
                lr, valid = normalise(scene.values, *self.cascade.input_norm(), out=scene.values)
        scene = LRScene(None, **meta)
        with clock("scatter"):
            valid = r.bcast_array(valid)
        tiles, origin = self.plan(valid, scene.grid)
        s, h = self.scale, valid.shape[0]
        chunk = min(self.cfg.chunk, h * s)
        bands = partition_bands(chunk_row_cost(tiles, s, chunk, h * s), chunk, h * s, r.size)
        a, b = bands[r.rank]
        mine, plan = band_tiles(tiles, s, a, b), share_tiles(tiles, s, bands)
        computed = [plan.computed_by(k, band_tiles(tiles, s, *band)) for k, band in enumerate(bands)]
        with clock("scatter"):
            lr, row_offset = self._scatter_rows(lr, computed)
        t_read = time.perf_counter() - t0
        final = self.output_path(slot or scene.time)
        spec = self.spec(scene, {"ranks": r.size, "tile_lr": self.cfg.tile_lr,
                                 "overlap_lr": self.cfg.overlap_lr,
                                 "halo_hr": self.blend.halo, "ramp_hr": self.blend.ramp,
                                 "tiling_exact": int(self.blend.exact), "seed": self.cfg.seed})

        claim, err = None, None
        if r.rank == 0:  # this run's token and lock: another run's clean-up leaves our temporaries alone
            try:
                claim = claim_output(final)
                create_output(claim.tmp, spec)
            except Exception as e:  # noqa: BLE001
                err = _message(e, final, "cannot create output")
        self._fail_if(r.agree(err), OutputError, claim)
        token = r.bcast(claim.token if r.rank == 0 else None)
        claim = claim or OutputClaim(final, token)

        t1 = time.perf_counter()
        target = claim.tmp if r.rank == 0 else claim.part(r.rank)
        err = None
        try:
            if b > a:
                self._compute_band(lr, row_offset, valid, origin, mine, computed[r.rank], plan, spec,
                                   target, a, b, part=r.rank > 0)
        except PeerStopped:
            err = None  # the rank that stopped reports why
        except Exception as e:  # noqa: BLE001
            err = _message(e, final, f"write failed on rank {r.rank}")
        t_compute = time.perf_counter() - t1
        with clock("wait"):  # for the slowest rank
            err = r.agree(err)
        self._fail_if(err, OutputError, claim)

        t2, err, record = time.perf_counter(), None, {}
        if r.rank == 0:
            try:
                with clock("merge"):
                    for k, (pa, pb) in enumerate(bands[1:], start=1):
                        if pb > pa:
                            merge_part(claim.tmp, claim.part(k), pa, spec.variables)
                record_chunk_index(claim.tmp)
                if views is not None:  # before the rename: an output under its final name has its quicklook
                    self._draw_quicklook(views, claim.tmp, final)
                record = output_record(claim.tmp)
                publish(claim.tmp, final)
            except Exception as e:  # noqa: BLE001
                err = _message(e, final, "assembling the output failed")
        self._fail_if(r.agree(err), OutputError, claim)
        if r.rank == 0:
            claim.discard(0, r.size)
        t_merge = time.perf_counter() - t2
        seconds = {"read": t_read, "compute": t_compute, "merge": t_merge, "total": time.perf_counter() - t0}
        per_rank = r.gather((peak_rss_mb(), round(t_compute, 2), len(computed[r.rank]), clock.rounded()))
        if r.rank == 0:
            log.info("%s: %d tiles on %d rank(s), %.1f s (read %.1f, compute %.1f, merge %.1f); per rank "
                     "(peak RSS MB, compute s, tiles): %s", final.name, len(tiles), r.size, seconds["total"],
                     t_read, t_compute, t_merge, [x[:3] for x in per_rank])
            log.info("seconds per stage, rank 0: %s", per_rank[0][3])
        per_rank = per_rank or []
        return SceneResult(final, len(tiles), seconds, r.size, [x[0] for x in per_rank],
                           [x[1] for x in per_rank], [x[2] for x in per_rank], record,
                           [x[3] for x in per_rank])

    def _fail_if(self, err: str | None, kind, claim: OutputClaim | None = None) -> None:
        """On an agreed error every rank removes what it wrote (its part; rank 0 the temporary
        output and its lock), then raises: nothing partial is left under any name."""
        if err is None:
            return
        if claim is not None:
            claim.discard(self.ranks.rank)
        stopped = self.ranks.agree(signals.received())  # collective: every rank takes the same branch
        raise (Interrupted if stopped else kind)(err)

    def _draw_quicklook(self, views: dict, nc: Path, final: Path) -> Path | None:
        png = final.with_suffix(".png")
        try:
            return sr_quicklook(views, self.pair.lr_channels, nc, png, title=final.name)
        except Exception as e:  # noqa: BLE001 - the product is complete; a missing picture is not a failure
            log.warning("%s: quicklook not written (%s)", final, one_line(e))
            return None

    def quicklook(self, files: list[str | Path], final: Path) -> Path | None:
        """Draw the quicklook of a finished output from its input (a run died before drawing it)."""
        scene = read_input(files, self.reg, self.pair.lr, self.pair.lr_channels)
        return self._draw_quicklook(quicklook_views(scene.values), final, final)

    def plan(self, valid: np.ndarray, grid: GeosGrid) -> tuple[list[Tile], tuple[int, int]]:
        """The global tile plan and the scene's origin in the full-disk HR grid (keys the noise)."""
        return (plan_tiles(valid, self.cfg.tile_lr, self.cfg.overlap_lr),
                (grid.row0 * self.scale, grid.col0 * self.scale))

    def prepare(self, scene: LRScene) -> tuple[np.ndarray, np.ndarray, list[Tile], tuple[int, int]]:
        """(normalised LR, validity, tile plan, origin) of a scene in one process (benchmarks)."""
        lr, valid = normalise(scene.values, *self.cascade.input_norm())
        return (lr, valid, *self.plan(valid, scene.grid))

    def _scatter_rows(self, lr: np.ndarray | None, per_rank: list[list[Tile]]) -> tuple[np.ndarray, int]:
        """Rank 0 (which read the scene) sends every rank the LR rows its tiles need; returns this
        rank's rows and the scene row they start at.  No rank but 0 ever holds the whole scene."""
        r = self.ranks
        spans = [(min(t.row0 for t in ts), max(t.row0 + t.rows for t in ts)) if ts else (0, 0)
                 for ts in per_rank]
        if r.size == 1:
            return lr, 0
        if r.rank == 0:
            for k in range(1, r.size):
                r.send_array(lr[:, spans[k][0]:spans[k][1]], k)
            lo, hi = spans[0]
            return np.ascontiguousarray(lr[:, lo:hi]), lo
        return r.recv_array(0), spans[r.rank][0]

    def _compute_band(self, lr, row_offset: int, valid, origin: tuple[int, int], tiles: list[Tile],
                      own: list[Tile], plan: TilePlan, spec: OutputSpec, target: Path, a: int, b: int,
                      part: bool) -> None:
        """Blend and write rows [a, b) from ``tiles`` (those touching them): this rank computes
        ``own`` (those ``plan`` gives it) and receives the others from their owners (:mod:`.halo`)."""
        lo, hi = self.cascade.output_norm()
        tile_rows = max((t.rows for t in tiles), default=0)
        clock = self.runner.clock
        exchange = TileExchange(self.ranks, tiles, plan, len(spec.planes), self.scale, clock)
        sink = BandSink(target, spec, a, b, part, self.cfg.writer_threads, clock)
        from tqdm import tqdm
        bar = tqdm(total=len(own), desc=f"rank {self.ranks.rank} tiles", unit="tile", leave=False,
                   disable=not (self.progress and self.ranks.rank == 0))

        def counted(results):
            for r in results:
                bar.update()
                yield r

        try:
            results = exchange.stream(counted(self.runner.run(lr, own, origin, row_offset)))
            for row, block in stitch_rows(results, valid.shape, self.scale, self.blend, len(spec.planes),
                                          a, b, spec.chunks[0], tile_rows, clock):
                with clock("denormalise"):
                    planes = band_planes(block, spec, lo, hi)
                sink.write(row, planes)
            exchange.finish()
        except BaseException:
            exchange.abort()  # the other ranks must not wait for tiles this one will not send
            raise
        finally:
            bar.close()
            sink.close()


def _message(e: Exception, where, what: str = "") -> str:
    """One line for any failure: our errors already name their file; others get the path and type."""
    if isinstance(e, CloudSRError):
        return str(e)
    return f"{where}: {what + ' ' if what else ''}({e.__class__.__name__}: {one_line(e)[:200]})"


def scenes_for_dates(archive: str | Path, registry: Registry, pair_name: str, start: dt.datetime,
                     end: dt.datetime | None = None):
    """The LR files of the scene nearest ``start`` (within half a repeat cycle), or of every scene in
    [start, end]."""
    from ..data.index import ArchiveIndex
    pair = registry.pair(pair_name)
    idx = ArchiveIndex(archive, registry)
    if end is None:
        return [idx.find(pair.lr, pair.lr_formats, start)]
    scenes = idx.between(pair.lr, pair.lr_formats, start, end)
    if not scenes:
        from ..errors import ArchiveError
        raise ArchiveError(f"{archive}: no {pair.lr} scene between {start.isoformat()} and {end.isoformat()}")
    return scenes


def output_record(path: str | Path) -> dict:
    """What to keep about a finished output (a ledger, a catalogue) to check it later without
    parsing it: its size and sha256 (``infer`` prints both)."""
    path = Path(path)
    return {"size": path.stat().st_size, "sha256": sha256(path)}


def verify_output(path: str | Path, channels: list[str] | None = None, full: bool = False,
                  record: dict | None = None) -> dict:
    """Check a finished output opens, is one of ours and is not truncated (cheap: metadata and the
    chunk index); ``full`` also decodes every chunk of every variable against the checksum stored
    with it (Fletcher32).  With the ``record`` taken when it was written (:func:`output_record`)
    its size is compared first, and with ``full`` its sha256, before the file is parsed at all (a
    damaged HDF5 header can make the library itself loop).  Returns the file's global attributes;
    raises InputError with the reason."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such output")
    if record:
        size = path.stat().st_size
        if size != record["size"]:
            raise InputError(f"{path}: {size} bytes, {record['size']} when it was written "
                             "(truncated or replaced)")
        if full and sha256(path) != record["sha256"]:
            raise InputError(f"{path}: sha256 differs from the one recorded when it was written "
                             f"(corrupt or replaced)")
    verify_chunks(path, full)  # first: it names the variable and chunk that fail
    try:
        with xr.open_dataset(path, engine="netcdf4", decode_cf=False) as ds:
            attrs = dict(ds.attrs)
            have = [v for v in ds.data_vars if ds[v].dims[-2:] == ("y", "x")]
            shape = (ds.sizes.get("y"), ds.sizes.get("x"))
    except Exception as e:  # noqa: BLE001 - netCDF4 raises RuntimeError ("HDF error") for a corrupt coordinate
        raise InputError(f"{path}: not a readable output ({one_line(e)[:200]})") from None
    if "source_sha256" not in attrs or not have:
        raise InputError(f"{path}: not a cloudsr-hpc output (provenance missing)")
    if shape != (attrs.get("grid_nrows"), attrs.get("grid_ncols")):
        raise InputError(f"{path}: {shape[0]}x{shape[1]} pixels, its grid attributes say "
                         f"{attrs.get('grid_nrows')}x{attrs.get('grid_ncols')}")
    if channels:
        want = variable_names(channels, int(attrs.get("ensemble_members", 1)),
                              bool(attrs.get("ensemble_keep_members", 0)))
        if sorted(have) != sorted(want):
            raise InputError(f"{path}: variables {have}, expected {want}")
    return attrs


def json_summary(res: SceneResult) -> str:
    return json.dumps({"output": str(res.path), "tiles": res.tiles, "ranks": res.ranks,
                       "seconds": {k: round(v, 2) for k, v in res.seconds.items()},
                       "peak_rss_mb": res.peak_rss_mb,
                       "compute_s_per_rank": res.compute_s, "tiles_per_rank": res.rank_tiles,
                       "stages_s_per_rank": res.stages_s, **res.record})

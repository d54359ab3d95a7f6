"""Batched execution of a cascade over tiles on one device.

Every batch has the same shape (the last one is padded by repeating its last tile), so a tile's
numbers do not depend on which rank or batch slot computes it.  While the device runs batch k,
a worker thread cuts and pins batch k+1 on the host (copies to the device are ``non_blocking``
from pinned memory), so host work and transfers overlap with compute.  On a GPU the forward runs
under bf16 autocast when ``precision`` says so; always under ``torch.inference_mode``.

Ensembles: with ``members`` N > 1 each batch is sampled N times (member k draws its own
position-keyed noise), folded into a running mean and sum of squared deviations (Welford, in
float64) and handed on as planes: the N-member mean, the sample variance (ddof 1) and, when kept,
the members themselves.  Variance rather than standard deviation is blended across tile overlaps
and the square root taken when the rows are written.  With exact tiling (the overlap covers the
receptive margin, the default) both tiles hold the same members there, so this is the members'
own spread; in an approximate Hann ramp it is the weighted mean of the two tiles' variances.
Memory grows with N only for the kept members, by the tile batch, never by the scene.  A calibrated
cascade (``spread_inflation``, :mod:`cloudsr_hpc.models.calibration`) has its variance scaled by α²
and its kept members inflated about the same mean; the mean itself is untouched.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ..core import signals
from ..core.timing import StageClock
from ..models.calibration import inflate
from ..models.cascade import Cascade
from .tiling import Tile

log = logging.getLogger(__name__)


def pick_device(local_rank: int | None = None) -> torch.device:
    """The rank's own GPU (:func:`cloudsr_hpc.core.devices.rank_device_index`: bound or unbound, a
    ConfigError naming the counts when a node has more ranks than GPUs), or the CPU.  ``local_rank``
    None: a process alone."""
    if torch.cuda.is_available():
        from ..core.devices import rank_device_index
        return torch.device("cuda", rank_device_index(local_rank, torch.cuda.device_count()))
    return torch.device("cpu")


def auto_batch_size(free_bytes: int, tile_bytes: int, cap: int = 64, share: float = 0.8) -> int:
    """Tiles per batch that fit ``share`` of the free device memory, given the peak memory one tile
    takes through the cascade (measured: :meth:`TileRunner.tile_bytes`); at least 1, at most ``cap``."""
    return int(max(1, min(cap, share * free_bytes // max(1, tile_bytes))))


class _OnHost:
    """A batch's prediction and HR validity on the host, now (CPU) or once the device's copy has
    landed (GPU: pinned buffers filled on a side stream while the next batch computes)."""

    def __init__(self, pred, mask, done=None, clock: StageClock | None = None):
        self.pred, self.mask, self.done, self.clock = pred, mask, done, clock

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        if self.done is not None:
            with self.clock("d2h_wait"):
                self.done.synchronize()
        return np.asarray(self.pred), np.asarray(self.mask)


class TileRunner:
    def __init__(self, cascade: Cascade, device: torch.device, batch_size: int, precision: str = "auto",
                 compile: bool = False, members: int = 1, keep_members: bool = False):
        self.cascade, self.device, self.batch_size = cascade, device, batch_size
        self.members, self.keep_members = members, keep_members and members > 1
        self.bf16 = device.type == "cuda" and precision in ("auto", "bf16")
        if device.type == "cpu":
            # denormal activations cost CPUs up to 3x (measured: 273 s -> 90 s for one demo scene)
            torch.set_flush_denormal(True)
        cuda = device.type == "cuda"
        for st in cascade.stages:
            st.model.to(device).eval()
            if cuda:  # tensor-core convolutions want NHWC; CPU results stay as they were
                st.model.to(memory_format=torch.channels_last)
            if compile:  # every batch has one shape: compiled once, never recompiled
                st.model = torch.compile(st.model, dynamic=False)
        self.scale = cascade.scale
        self._copy_stream = torch.cuda.Stream(device) if cuda else None
        # per-stage seconds (cut, wait_input, h2d, model, d2h[, d2h_wait], ensemble); a scene swaps in its own
        self.clock = StageClock()

    def _host_batch(self, lr: np.ndarray, tiles: list[Tile], off: int,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        with self.clock("cut"):  # on the prefetch thread, overlapping the device's batch
            padded = tiles + [tiles[-1]] * (self.batch_size - len(tiles))
            x = np.stack([lr[:, t.row0 - off:t.row0 - off + t.rows, t.col0:t.col0 + t.cols] for t in padded])
            m = np.isfinite(x)  # per channel: NaN marks what a channel lacks (space, night reflectance)
            x[~m] = 0.0
            x, m = torch.from_numpy(x), torch.from_numpy(m.astype(np.float32))
            if self.device.type == "cuda":
                x, m = x.pin_memory(), m.pin_memory()
            return x, m

    def run(self, lr: np.ndarray, tiles: list[Tile], origin_hr: tuple[int, int] = (0, 0),
            row_offset: int = 0) -> Iterator[tuple[Tile, np.ndarray, np.ndarray]]:
        """Yield (tile, prediction (C, rows*s, cols*s) float32, HR validity (rows*s, cols*s)) in tile order.

        ``lr`` (C, H, W) is normalised with NaN where a channel is invalid; ``origin_hr``
        is the scene's top-left pixel in the full-disk HR grid (keys the diffusion noise); ``lr`` may
        hold only the scene rows from ``row_offset`` on (a rank's slice)."""
        s, r0, c0 = self.scale, origin_hr[0], origin_hr[1]
        batches = [tiles[i:i + self.batch_size] for i in range(0, len(tiles), self.batch_size)]
        if not batches:
            return
        with ThreadPoolExecutor(1, thread_name_prefix="tile-prefetch") as pool:
            nxt = pool.submit(self._host_batch, lr, batches[0], row_offset)
            behind = None  # on a GPU: the previous batch, its copy to the host in flight
            for k, batch in enumerate(batches):
                signals.check("inference")  # a stop request (time limit, cancel) ends the scene here
                with self.clock("wait_input"):
                    x, m = nxt.result()
                if k + 1 < len(batches):
                    nxt = pool.submit(self._host_batch, lr, batches[k + 1], row_offset)
                origins = [(r0 + t.row0 * s, c0 + t.col0 * s) for t in batch]
                origins += [origins[-1]] * (self.batch_size - len(batch))
                out = (self._launch(x, m, origins) if self.members == 1
                       else _OnHost(*self._ensemble(x, m, origins)))
                if behind is not None:  # batch k queued on the device before batch k-1 is blended
                    yield from self._tiles(*behind)
                behind = (batch, out)
                if self._copy_stream is None:
                    yield from self._tiles(*behind)
                    behind = None
            if behind is not None:
                yield from self._tiles(*behind)

    @staticmethod
    def _tiles(batch: list[Tile], out: _OnHost) -> Iterator[tuple[Tile, np.ndarray, np.ndarray]]:
        pred, hr_mask = out.result()
        for i, t in enumerate(batch):
            yield t, pred[i], hr_mask[i, 0] > 0

    def _launch(self, x: torch.Tensor, m: torch.Tensor, origins, member: int = 0) -> _OnHost:
        """Run one batch.  On a GPU nothing here waits for the device: the copy in, the cascade
        and the copy back (on a side stream, into pinned buffers) are queued and timed by CUDA
        events; the returned handle waits when the host needs the numbers."""
        if self._copy_stream is None:
            with self.clock("h2d"):
                x, m = x.to(self.device), m.to(self.device)
            with self.clock("model"), torch.inference_mode():
                pred, hr_mask = self.cascade(x, m, origins, member=member)
            with self.clock("d2h"):
                return _OnHost(pred.float().cpu().numpy(), hr_mask.float().cpu().numpy())
        events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        events[0].record()
        x, m = x.to(self.device, non_blocking=True), m.to(self.device, non_blocking=True)
        events[1].record()
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16):
            pred, hr_mask = self.cascade(x, m, origins, member=member)
            pred, hr_mask = pred.float(), hr_mask.float()
        events[2].record()
        self._copy_stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._copy_stream):
            pred_h = torch.empty(pred.shape, dtype=torch.float32, pin_memory=True)
            mask_h = torch.empty(hr_mask.shape, dtype=torch.float32, pin_memory=True)
            pred_h.copy_(pred, non_blocking=True)
            mask_h.copy_(hr_mask, non_blocking=True)
            events[3].record(self._copy_stream)
        pred.record_stream(self._copy_stream)  # not reused by the allocator before the copy is done
        hr_mask.record_stream(self._copy_stream)
        for stage, (a, b) in zip(("h2d", "model", "d2h"), ((0, 1), (1, 2), (2, 3)), strict=True):
            self.clock.add_later(stage, lambda a=events[a], b=events[b]: (b.synchronize(),
                                                                          a.elapsed_time(b) / 1e3)[1])
        return _OnHost(pred_h.numpy(), mask_h.numpy(), events[3], self.clock)

    def _forward(self, x: torch.Tensor, m: torch.Tensor, origins,
                 member: int = 0) -> tuple[np.ndarray, np.ndarray]:
        return self._launch(x, m, origins, member).result()

    def tile_bytes(self, tile_lr: int, channels: int) -> int:
        """Peak device memory one tile takes through the cascade (GPU; probes a 1-tile batch of
        zeros with its own forward, whose result is dropped)."""
        dev = self.device
        torch.cuda.synchronize(dev)
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        x = torch.zeros(1, channels, tile_lr, tile_lr, device=dev)
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16):
            self.cascade(x, torch.ones_like(x), [(0, 0)])
        torch.cuda.synchronize(dev)
        return int(torch.cuda.max_memory_allocated(dev) - base)

    def _ensemble(self, x: torch.Tensor, m: torch.Tensor, origins) -> tuple[np.ndarray, np.ndarray]:
        """(N, planes, H, W): the members' mean, sample variance and (kept) members, channel-major
        within each group; members are folded in one at a time (Welford)."""
        mean = m2 = hr_mask = None
        kept = []
        for k in range(self.members):
            pred, hr_mask = self._forward(x, m, origins, member=k)
            with self.clock("ensemble"):
                if self.keep_members:
                    kept.append(pred)
                p = pred.astype(np.float64)
                if mean is None:
                    mean, m2 = p.copy(), np.zeros_like(p)
                    continue
                delta = p - mean
                mean += delta / (k + 1)
                m2 += delta * (p - mean)
        var = m2 / (self.members - 1)
        alpha = getattr(self.cascade, "spread_inflation", None)
        if alpha is not None:  # calibrated spread: anomalies scaled by alpha, the mean as it is
            var *= alpha.reshape(1, -1, 1, 1) ** 2
            if kept:
                kept = list(inflate(np.stack(kept).astype(np.float64), alpha, 2).astype(np.float32))
        planes = [mean.astype(np.float32), var.astype(np.float32), *kept]
        return np.concatenate(planes, axis=1), hr_mask

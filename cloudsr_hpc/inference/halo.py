"""Tiles that straddle a band boundary, computed once and shared between the ranks that need them.

Every tile touching a rank's band contributes to its rows, and a tile straddling a boundary
touches two (or, with thin bands, more) bands.  Instead of each neighbour computing it, the tile
is **owned by the highest band it touches**: there it lies at the top of the band, so the owner
computes it among its first batches and sends it (non-blocking) to the lower ranks, which reach
it only at the bottom of their bands -- by then it has long arrived.  A rank therefore waits only
for higher ranks, and the highest never waits: no cycle, no deadlock.  A tile's numbers do not
depend on which rank or batch slot computes it (fixed batch shape, position-keyed noise), so each
pixel still gets the same tiles, blended in the same order, whatever the rank count.

Failure: a rank that stops early (an error, a stop request) sends an abort to every lower rank it
still owes tiles, and drains what higher ranks still send it, so every rank reaches the pipeline's
collective error agreement instead of waiting for a tile that never comes.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from ..core.timing import StageClock
from .mpi import Ranks
from .tiling import Tile

log = logging.getLogger(__name__)
TAG_TILE, TAG_ABORT = 11, 12


class PeerStopped(RuntimeError):
    """A higher rank stopped before sending a tile this rank needs (that rank reports why)."""


@dataclass
class TilePlan:
    """Who computes what: ``owner[t]`` the rank computing tile t, ``receivers[t]`` the lower ranks it
    is sent to."""
    owner: dict[Tile, int] = field(default_factory=dict)
    receivers: dict[Tile, list[int]] = field(default_factory=dict)

    def computed_by(self, rank: int, tiles: Iterable[Tile]) -> list[Tile]:
        return [t for t in tiles if self.owner[t] == rank]


def share_tiles(tiles: list[Tile], scale: int, bands: list[tuple[int, int]]) -> TilePlan:
    """Each tile to the highest non-empty band it touches; the other bands it touches receive it."""
    plan = TilePlan()
    for t in tiles:
        touching = [k for k, (a, b) in enumerate(bands) if b > a and t.touches_rows(scale, a, b)]
        if touching:
            plan.owner[t], plan.receivers[t] = touching[-1], touching[:-1]
    return plan


class TileExchange:
    """The stream of (tile, prediction, HR validity) of one rank's band: its own tiles as computed
    (each sent on to the lower ranks that need it), the others received from their owners, in the
    band's tile order.  ``planes``: prediction planes per tile."""

    def __init__(self, ranks: Ranks, band: list[Tile], plan: TilePlan, planes: int, scale: int,
                 clock: StageClock | None = None):
        self.ranks, self.band, self.plan, self.planes, self.scale = ranks, band, plan, planes, scale
        self.clock = clock or StageClock()
        self.sends: list = []  # (request, buffer): buffers live until their send completes
        me = ranks.rank
        self.owed = {k: sum(k in plan.receivers[t] for t in band if plan.owner[t] == me)
                     for k in range(me)}  # tiles still to send, per lower rank
        self.expected = {o: sum(plan.owner[t] == o for t in band) for o in range(me + 1, ranks.size)}

    def stream(self, computed: Iterable[tuple[Tile, np.ndarray, np.ndarray]],
               ) -> Iterator[tuple[Tile, np.ndarray, np.ndarray]]:
        r, me = self.ranks, self.ranks.rank
        own = iter(computed)
        for t in self.band:
            owner = self.plan.owner[t]
            if owner == me:
                tile, pred, valid = next(own)
                assert tile == t, "computed tiles out of band order"
                if self.plan.receivers[t]:
                    buf = np.concatenate([pred, valid[None].astype(np.float32)])
                    for k in self.plan.receivers[t]:
                        self.sends.append((r.isend_array(buf, k, TAG_TILE), buf))
                        self.owed[k] -= 1
                yield t, pred, valid
            else:
                with self.clock("wait_tiles"):
                    buf = self._receive(owner, t)
                yield t, buf[:-1], buf[-1] > 0

    def _receive(self, owner: int, t: Tile) -> np.ndarray:
        tag, data = self.ranks.recv_any(owner)
        if tag == TAG_ABORT:
            self.expected[owner] = 0
            raise PeerStopped(f"rank {owner} stopped before sending its tile at LR row {t.row0}")
        self.expected[owner] -= 1
        return data.reshape(self.planes + 1, t.rows * self.scale, t.cols * self.scale)

    def finish(self) -> None:
        """Wait until every tile sent has been received."""
        self.ranks.wait_all([q for q, _ in self.sends])
        self.sends.clear()

    def abort(self) -> None:
        """After a failure on this rank: tell lower ranks no more tiles come, take what higher ranks
        still send, then complete the sends already started."""
        r = self.ranks
        told = [k for k, n in self.owed.items() if n > 0]
        waits = {o: n for o, n in self.expected.items() if n > 0}
        if told or waits:
            log.warning("rank %d stopping: no more tiles for rank(s) %s; taking the %s tile(s) still due "
                        "from rank(s) %s", r.rank, told, sum(waits.values()), list(waits))
        for k, n in self.owed.items():
            if n > 0:
                flag = np.zeros(1, np.float32)
                self.sends.append((r.isend_array(flag, k, TAG_ABORT), flag))
        for owner, n in self.expected.items():
            for _ in range(n):
                if r.recv_any(owner)[0] == TAG_ABORT:
                    break
        self.finish()

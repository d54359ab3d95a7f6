"""Seconds per named stage of a job, summed over calls and threads (the breakdown a benchmark or
a JSON summary reports: where a scene's time goes)."""
from __future__ import annotations

import threading
import time
from collections import defaultdict
from contextlib import contextmanager


class StageClock:
    """``with clock("model"): ...`` adds the block's wall seconds to ``seconds["model"]``.  Stages
    timed on worker threads (compression) overlap the caller's: their sum is thread-seconds, not
    a share of the wall time.  ``sync`` (e.g. ``torch.cuda.synchronize``) is called before a block
    ends, so asynchronous device work is charged to the stage that launched it."""

    def __init__(self, sync=None):
        self.seconds: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()
        self._sync = sync

    @contextmanager
    def __call__(self, stage: str, sync: bool = False):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if sync and self._sync is not None:
                self._sync()
            self.add(stage, time.perf_counter() - t0)

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] += seconds

    def rounded(self, digits: int = 3) -> dict[str, float]:
        with self._lock:
            return {k: round(v, digits) for k, v in self.seconds.items()}

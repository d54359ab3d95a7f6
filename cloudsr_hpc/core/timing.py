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
    a share of the wall time.  Asynchronous device work is timed by the device's own events
    (:meth:`add_later`), not by waiting for it."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()
        self._later: list = []  # (stage, () -> seconds): device timers read when the figures are asked

    @contextmanager
    def __call__(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - t0)

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] += seconds

    def add_later(self, stage: str, seconds) -> None:
        """Charge ``seconds()`` to ``stage`` when the figures are read (e.g. the elapsed time between
        two CUDA events: timing a GPU without synchronising it, which would stop the overlap)."""
        with self._lock:
            self._later.append((stage, seconds))

    def rounded(self, digits: int = 3) -> dict[str, float]:
        with self._lock:
            later, self._later = self._later, []
        for stage, seconds in later:
            self.add(stage, seconds())
        with self._lock:
            return {k: round(v, digits) for k, v in self.seconds.items()}

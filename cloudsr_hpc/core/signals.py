"""Stop requests from signals, honoured at safe points instead of killing work mid-write.

A handler only records which signal came; long loops call :func:`check` between units of work
(a tile batch, a scene) and get :class:`~cloudsr_hpc.errors.Interrupted`, which the normal
failure path turns into a clean abandon (temporaries removed, every MPI rank agreeing).  Used
for Slurm's time-limit warning (``--signal=USR1@60``: requeue the job) and for SIGTERM of a
campaign worker (cancel or preemption: release the claim without spending an attempt).
"""
from __future__ import annotations

import signal
from contextlib import contextmanager

from ..errors import Interrupted

_received: list[str] = []


def _record(signum, _frame) -> None:
    _received.append(signal.Signals(signum).name)


def install(*signums: int) -> None:
    """Record ``signums`` from now on (replacing earlier handlers, e.g. Submitit's SIGTERM bypass)."""
    for s in signums:
        signal.signal(s, _record)


@contextmanager
def stop_on(*signums: int):
    """Within the block, ``signums`` request a stop (see :func:`check`); the previous handlers and
    an empty record are restored after it."""
    previous = {s: signal.getsignal(s) for s in signums}
    reset()
    install(*signums)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        reset()


def received() -> str | None:
    """The first signal recorded since :func:`reset`, if any."""
    return _received[0] if _received else None


def reset() -> None:
    _received.clear()


def check(what: str = "work") -> None:
    """Raise :class:`Interrupted` if a stop was requested."""
    if _received:
        raise Interrupted(f"{what} stopped by {_received[0]}")

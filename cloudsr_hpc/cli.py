"""What every command-line entry point shares: logging set-up and the one-line error contract."""
from __future__ import annotations

import logging
import sys

from .errors import CloudSRError, one_line

NOISY = ("satpy", "pyresample", "pyorbital", "h5py", "fsspec")


def setup_process(verbose: bool = False) -> None:
    """What every entry point does first: logging, and glibc's allocator told to reuse freed
    memory (:func:`reuse_heap`)."""
    setup_logging(verbose)
    reuse_heap()


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.ERROR)


def guarded(fn, *args) -> int:
    """Run a command: a :class:`CloudSRError` becomes ``error: <one line>`` and exit 2."""
    try:
        return fn(*args)
    except CloudSRError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


# glibc mallopt(3) parameters
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_KEEP_FREE_BYTES = 2 ** 31 - 1  # largest value mallopt takes (an int): freed heap kept for reuse


def reuse_heap() -> bool:
    """Serve every allocation from glibc's heap and keep freed memory for reuse.

    By default glibc maps each allocation above its mmap threshold (32 MB at most) afresh and
    unmaps it on free: every tile batch's activations, conditions and accumulators then fault in
    new zeroed pages, which cost as much kernel time as the model's own arithmetic (measured on
    a 352² cascade scene: 27 s system against 33 s user).  With mmap off and a large trim
    threshold the same pages are reused: system time drops to ~0, peak RSS rises by the heap's
    fragmentation (~25 % there) and stays flat from one scene to the next.  The same as the
    environment ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...`` that ``slurm/env.sh`` exports,
    for processes started any other way.  ``CLOUDSR_MALLOC=system`` keeps glibc's defaults;
    returns whether the setting was applied (False off glibc)."""
    import ctypes
    import os
    if os.environ.get("CLOUDSR_MALLOC", "reuse") == "system":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_FREE_BYTES))
    except (OSError, AttributeError):  # not glibc (musl, macOS): its allocator's defaults
        return False

"""What every command-line entry point shares: logging set-up and the one-line error contract."""
from __future__ import annotations

import logging
import sys

from .errors import CloudSRError, one_line

NOISY = ("satpy", "pyresample", "pyorbital", "h5py", "fsspec")


def setup_process(verbose: bool = False) -> None:
    """What every entry point does first: logging, and glibc's allocator told to reuse freed
    memory (:func:`cloudsr_hpc.core.resources.reuse_heap`)."""
    from .core.resources import reuse_heap
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

"""What a process uses (peak resident memory) and how it allocates (glibc heap reuse)."""
from __future__ import annotations


def peak_rss_mb() -> int:
    """This process's peak resident memory in MB: VmHWM of its own address space.  (``ru_maxrss``
    survives exec, so a child started from a large parent reports the parent's size at fork.)"""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        import resource
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)


# glibc mallopt(3) parameters
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_KEEP_FREE_BYTES = 2 ** 31 - 1  # largest value mallopt takes (an int): freed heap kept for reuse


def reuse_heap() -> bool:
    """Serve every allocation from glibc's heap and keep freed memory for reuse.

    By default glibc maps each allocation above its mmap threshold (32 MB at most) afresh and
    unmaps it on free: every tile batch's activations, conditions and accumulators then fault in
    new zeroed pages, which cost as much kernel time as the model's own arithmetic (measured on
    a demo cascade scene: 27 s system against 33 s user).  With mmap off and a large trim
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

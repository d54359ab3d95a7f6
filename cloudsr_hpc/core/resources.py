"""What a process uses: peak resident memory."""
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


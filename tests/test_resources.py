"""The allocator setting every entry point applies: freed memory is kept for reuse, not unmapped
and faulted in again at the next tile batch."""
import os
import subprocess
import sys

PROBE = """
import numpy as np
from cloudsr_hpc.cli import setup_process
setup_process()
def rss_mb():
    return next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmRSS:")) / 1024
r0 = rss_mb()
a = np.ones(2 ** 25); del a  # 256 MB, touched and freed
r1 = rss_mb()
b = np.ones(2 ** 25)  # the same size again: served from what was kept?
print(round(r1 - r0), round(rss_mb() - r0))
"""


def kept_mb(**env) -> tuple[int, int]:
    p = subprocess.run([sys.executable, "-c", PROBE], env={**os.environ, **env}, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    kept, reused = p.stdout.split()[-2:]
    return int(kept), int(reused)


def test_entry_points_keep_freed_memory_for_reuse():
    """A freed 256 MB buffer stays in the heap after setup_process and serves the next one of the
    same size (RSS does not grow again); glibc's default (CLOUDSR_MALLOC=system) unmaps it at once,
    so the next buffer faults in 256 MB of fresh pages."""
    kept, again = kept_mb()
    assert 200 < kept < 320 and again < kept + 20
    kept, again = kept_mb(CLOUDSR_MALLOC="system")
    assert kept < 20 and again > 200

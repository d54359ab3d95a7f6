import os
import sys
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=None, check=False):
    """Run ``python -m cloudsr_hpc.submit`` as users do, in a subprocess."""
    proc = subprocess.run([sys.executable, "-m", "cloudsr_hpc.submit", *map(str, args)], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


@pytest.fixture
def cli():
    return run_cli

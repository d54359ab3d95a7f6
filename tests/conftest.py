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


@pytest.fixture(scope="session")
def sv_archive(tmp_path_factory):
    """A 5-slot SEVIRI->VIIRS synthetic archive and its training shards (shared by the slow tests)."""
    import yaml
    root = tmp_path_factory.mktemp("sv")
    run_cli("synth", "--pair", "seviri_viirs", "--start", "2024-06-01T11:30", "--end", "2024-06-01T12:30",
            "--archive", root / "archive", check=True)
    out = run_cli("pairs", "--pair", "seviri_viirs", "--archive", root / "archive", "--out", root / "pairs",
                  check=True)
    return root, yaml.safe_load(out.stdout)


def run_train(config, shards, out, *sets, port=None, timeout=1200, wait=True):
    """``python -m cloudsr_hpc.train`` in a subprocess (DeepSpeed owns the process group);
    ``wait=False`` returns the running Popen (stdout+stderr piped together)."""
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR", "/tmp/cloudsr_torch_ext"),
               MASTER_PORT=str(port or 29600 + (hash(str(out)) % 300)))
    cmd = [sys.executable, "-m", "cloudsr_hpc.train", "--config", str(config), "--set", f"data.shards={shards}",
           "--set", f"train.out_dir={out}"]
    for s in sets:
        cmd += ["--set", s]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)

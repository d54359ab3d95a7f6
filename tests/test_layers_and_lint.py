"""The layering and the lint CI enforces: ``lint-imports`` keeps the layers contract in pyproject.toml
(docs/architecture.md), ``ruff check`` is clean over the whole repository.  Both run as the venv's own
tools (installed by scripts/setup.sh); their output is printed when they fail."""
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

BIN = Path(sys.executable).parent


def _tool(name: str, *args: str, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    exe = BIN / name
    assert exe.is_file(), f"{exe} is missing: scripts/setup.sh installs ruff and import-linter (.[lint])"
    return subprocess.run([str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _output(p: subprocess.CompletedProcess) -> str:
    return f"exit {p.returncode}\n{p.stdout}\n{p.stderr}"


def test_ruff_is_clean_over_the_repository():
    p = _tool("ruff", "check", "--no-cache", ".")
    assert p.returncode == 0, _output(p)


def test_layers_contract_is_kept():
    p = _tool("lint-imports", "--no-cache")
    assert p.returncode == 0, _output(p)
    assert "1 kept, 0 broken" in p.stdout, _output(p)


def test_an_upward_import_inside_a_function_body_breaks_the_contract(tmp_path):
    """import-linter sees imports inside functions too (lazy ones included): a copy of the package
    with one added breaks the contract, so the contract test above covers them."""
    shutil.copytree(ROOT / "cloudsr_hpc", tmp_path / "cloudsr_hpc",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    network = tmp_path / "cloudsr_hpc" / "models" / "network.py"
    network.write_text(network.read_text() + "\n\ndef _upward():\n"
                       "    from ..training import checkpoint\n    return checkpoint\n")
    env = {"PATH": str(BIN), "PYTHONPATH": str(tmp_path), "HOME": str(tmp_path)}
    p = _tool("lint-imports", "--no-cache", cwd=tmp_path, env=env)
    assert p.returncode != 0, _output(p)
    assert "cloudsr_hpc.models.network -> cloudsr_hpc.training.checkpoint" in p.stdout, _output(p)

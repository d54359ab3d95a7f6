"""Shared bits of the benchmark scripts: timing and the JSON they leave behind."""
from __future__ import annotations

import json
import platform
import time
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def timed(results: dict, key: str):
    t0 = time.perf_counter()
    yield
    results[key] = round(time.perf_counter() - t0, 3)


def save(results: dict, out: str | Path) -> None:
    results.setdefault("machine", {"cpu": platform.processor() or platform.machine(),
                                   "python": platform.python_version()})
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))

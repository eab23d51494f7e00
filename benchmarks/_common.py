"""Shared helpers of the benchmark scripts: machine description, timing, output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable


def machine() -> dict:
    """What ran the benchmark."""
    import numpy as np

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
            "platform": platform.platform()}


def median_time(fn: Callable[[], object], repeats: int = 3, warmup: int = 1, budget: float = 20.0) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs; slow cases get
    fewer repeats so that the timed runs take about ``budget`` seconds (at least one)."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    if warmup:
        per = (time.perf_counter() - t0) / warmup
        repeats = max(1, min(repeats, int(budget / max(per, 1e-9))))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def write_json(name: str, payload: dict) -> Path:
    """Write ``benchmarks/results/<name>.json`` and return its path."""
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path


def table(rows: list[dict], cols: list[tuple[str, str, str]]) -> str:
    """Markdown table; ``cols`` are (key, header, format)."""
    head = "| " + " | ".join(h for _, h, _ in cols) + " |"
    sep = "|" + "|".join("---" for _ in cols) + "|"
    body = ["| " + " | ".join(("" if r.get(k) is None else format(r[k], f)) for k, _, f in cols) + " |" for r in rows]
    return "\n".join([head, sep, *body])

"""Shared helpers for the benchmarks: timing, peak memory, machine facts, result files."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def machine() -> dict:
    """What the figures were measured on (recorded in every result file)."""
    info = {"cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": sys.version.split()[0], "processor": _cpu_model()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # torch is optional for some benchmarks
        pass
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_repeats(fn, repeats: int = 5, warmup: int = 0) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "repeats": repeats}


def write_results(name: str, rows: list[dict], extra: dict | None = None) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "machine": machine(),
               "date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "rows": rows}
    if extra:
        payload.update(extra)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, out)
    return out


def print_table(rows: list[dict], columns: list[str] | None = None) -> None:
    if not rows:
        print("(no rows)")
        return
    columns = columns or list(rows[0])
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print(" | ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("-|-".join("-" * w for w in widths))
    for row in cells:
        print(" | ".join(v.ljust(w) for v, w in zip(row, widths)))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def auroc(clean, bad) -> float:
    """Area under the ROC curve of a score that should be higher on ``bad`` than on ``clean``
    (ties count half)."""
    import numpy as np

    c, b = np.asarray(clean, float), np.asarray(bad, float)
    wins = (b[:, None] > c[None, :]).sum() + 0.5 * (b[:, None] == c[None, :]).sum()
    return float(wins / (len(c) * len(b)))

"""Import 10,000 subjects (image folder + CSV) into a fresh cohort index."""

from __future__ import annotations

import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import peak_rss_mb, print_table, write_results  # noqa: E402

from bodyage_core.cohort import Workspace  # noqa: E402
from bodyage_core.cohort.importer import import_cohort  # noqa: E402


def main(n: int = 10_000, repeats: int = 3) -> None:
    rng = random.Random(0)
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        imgs = tmp / "images"
        imgs.mkdir()
        lines = ["eid,age,sex,bmi,site"]
        for i in range(n):
            sid = f"{1000000 + i}"
            (imgs / f"{sid}_20201_2_0.zip").write_bytes(b"")
            lines.append(f"{sid},{rng.uniform(44, 82):.1f},{rng.choice('MF')},"
                         f"{rng.uniform(18, 40):.1f},{rng.choice(['11025', '11026', '11027'])}")
        csv = tmp / "ukb.csv"
        csv.write_text("\n".join(lines) + "\n")
        for r in range(repeats):
            ws_path = tmp / f"ws{r}"
            t0 = time.perf_counter()
            summary = import_cohort(ws_path, imgs, csv, kind="ukbb_zip")
            times.append(time.perf_counter() - t0)
            assert summary.imported == n
            assert Workspace.open(ws_path).db.count() == n
    times.sort()
    rows = [{"task": f"import {n} subjects", "median_s": times[len(times) // 2],
             "min_s": times[0], "peak_rss_mb": peak_rss_mb()}]
    print_table(rows)
    print("wrote", write_results("import", rows))


if __name__ == "__main__":
    main()

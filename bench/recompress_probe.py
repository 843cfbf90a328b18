"""What recompressing a tenant's logs costs the process that runs the compaction sweep
(scenarios 2 and 6): its CPU, its wall time and its RSS, and what the child costs.

    .venv/bin/python bench/recompress_probe.py [LOGS] [RUNS]

A SQLite store of LOGS seed-shaped logs (55,000 by default; `logs_dataset`, written with
the skeleton as before any dictionary) gets its tenant's first dictionary, trained as the
sweep trains it; then the sweep's recompression (`Compaction._compact`, unpaced) brings
every log onto it, on a fresh copy of the store each run, each run in a process of its
own. That process stands for the server: its CPU (every thread), its RSS before and
after, and its children's CPU and peak RSS (`getrusage`) are measured around the
recompression alone.

To compare with another version of Solder, run it with that version first on
`PYTHONPATH` (its `solder.compaction` is the one measured; the output names it).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import rss_bytes
from logs_dataset import Dataset, bench_tenant, generate_sqlite, sample_logs, store_dictionary

from solder import compaction, training
from solder.compaction import Compaction, Swept
from solder.settings import Settings
from solder.store import queries as q
from solder.store.database import Database


def store(directory: Path, logs: int) -> tuple[Path, str]:
    """A store of about `logs` logs on the skeleton, with a trained dictionary stored (not
    yet applied); its path and its tenant's id."""
    dataset = Dataset(logs / 1_100_000)
    path = directory / "store.db"
    generate_sqlite(path, dataset, lambda _: None, dictionary=False)
    tenant_id = asyncio.run(bench_tenant(f"sqlite:///{path}")).id
    content, _, _ = training.train(sample_logs(dataset), None)
    asyncio.run(store_dictionary(f"sqlite:///{path}", tenant_id, content))
    return path, tenant_id


async def recompress(path: Path, tenant_id: str) -> dict[str, float]:
    url = f"sqlite:///{path}"
    db = Database(url)
    settings = Settings(database_url=url)
    try:
        sweeping = Compaction(db, settings)
        async with db.read() as conn:
            rows = [dict(row) for row in await q.tenant_dictionaries(conn, tenant_id)]
            await q.count_executions(conn, tenant_id)  # the connections warm, as a server's
        swept = Swept()
        rss, cpu, children = rss_bytes(os.getpid()), time.process_time(), _children()
        started = time.perf_counter()
        await sweeping._compact(tenant_id, rows, swept, paced=False, on_batch=None)
        wall = time.perf_counter() - started
        return {
            "logs": swept.recompressed,
            "wall_s": wall,
            "cpu_s": time.process_time() - cpu,
            "children_cpu_s": _children() - children,
            "rss_step_mb": (rss_bytes(os.getpid()) - rss) / 2**20,
            "children_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        }
    finally:
        await sweeping.stop()
        await db.dispose()


def _children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    if sys.argv[1:2] == ["--run"]:  # one run, in this process
        print(json.dumps(asyncio.run(recompress(Path(sys.argv[2]), sys.argv[3]))))
        return
    logs = int(sys.argv[1]) if len(sys.argv) > 1 else 55_000
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    print(f"solder.compaction: {compaction.__file__}")
    with tempfile.TemporaryDirectory(prefix="solder-recompress-") as tmp:
        original, tenant_id = store(Path(tmp), logs)
        figures: list[dict[str, float]] = []
        for run in range(runs):
            copy = Path(tmp) / f"run{run}.db"
            shutil.copy(original, copy)
            answer = subprocess.run(
                [sys.executable, __file__, "--run", str(copy), tenant_id],
                capture_output=True,
                text=True,
                check=True,
            )
            figures.append(json.loads(answer.stdout.splitlines()[-1]))
            print(" ".join(f"{k} {v:,.2f}" for k, v in figures[-1].items()), flush=True)
            copy.unlink()
    medians = {k: statistics.median(f[k] for f in figures) for k in figures[0]}
    print("median: " + " ".join(f"{k} {v:,.2f}" for k, v in medians.items()))


if __name__ == "__main__":
    main()

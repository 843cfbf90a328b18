"""A diagnostic beside scenario 6: the closed loop of runs.py on PostgreSQL for a long
window (`solder serve --no-worker` and two `solder worker` processes), and each
process's RSS. The full `run.py --scenario runs` also waits for the backlog to drain and
runs the open loop, which at PostgreSQL's rate takes far longer than the memory figure
needs.

    cd bench && ../.venv/bin/python memory_pg.py [SECONDS] [POSTGRES_URL]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from common import solder_stack
from runs import CLIENTS, MB, WARM_UP_SECONDS, Bench

SECONDS = float(sys.argv[1]) if len(sys.argv) > 1 else 600.0
URL = sys.argv[2] if len(sys.argv) > 2 else "postgresql://postgres@127.0.0.1:5432"

with (
    tempfile.TemporaryDirectory(prefix="solder-memory-pg-") as tmp,
    solder_stack("PostgreSQL", URL, Path(tmp), workers=2, upstream=True) as stack,
):
    bench = Bench(stack, Path(tmp))
    bench.load(WARM_UP_SECONDS, clients=CLIENTS)
    _, window = bench.load(SECONDS, clients=CLIENTS)
    print(f"{window.accepted / window.seconds:,.0f} runs accepted a second over {SECONDS:g} s")
    for process, samples in window.memory.items():
        rss = [(at, size / MB) for at, size in samples]
        settled = next(size for at, size in rss if at >= 10)
        print(
            f"{process}: peak {max(size for _, size in rss):.1f} MB, "
            f"{settled:.1f} MB at 10 s, {rss[-1][1]:.1f} MB at the end "
            f"({rss[-1][1] - settled:+.1f} MB)"
        )

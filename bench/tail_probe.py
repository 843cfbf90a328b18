"""A diagnostic beside scenario 2: the open loop's p99 window by window on a fresh SQLite
server, with settings changed, to find what makes the tail of a long run.

    .venv/bin/python bench/tail_probe.py RATE SECONDS [SOLDER_SETTING=VALUE ...]

For instance `SOLDER_COMPACTION_SWEEP_SECONDS=60` brings the compaction sweep's
training and recompression into a short run; `SOLDER_LOG_DICTIONARIES=false` leaves
them out.

To measure another version of Solder, run this from that version's work tree (with
it on `PYTHONPATH` for the child processes): the server starts as `python -m solder`,
which imports Solder from the working directory before `PYTHONPATH`.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from common import solder_stack
from runs import Bench

rate, seconds = float(sys.argv[1]), float(sys.argv[2])
settings = dict(arg.split("=", 1) for arg in sys.argv[3:])

with (
    tempfile.TemporaryDirectory(prefix="solder-tail-") as tmp,
    solder_stack("SQLite", None, Path(tmp), workers=0, upstream=True, settings=settings) as stack,
):
    latency = Bench(stack, Path(tmp)).open(rate, seconds)
    print(
        f"{settings or 'defaults'}: {latency.executions:,} runs at {latency.rate:,.0f}/s, "
        f"p50 {latency.p50:,.0f} ms, p99 {latency.p99:,.0f} ms; slowest 10 s windows: "
        + ", ".join(f"{at:.0f} s: {p99:,.0f} ms" for at, p99 in latency.slowest)
    )
    print((Path(tmp) / "serve.log").read_text()[-1500:])

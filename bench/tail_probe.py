"""A diagnostic beside scenario 2: the open loop's p99 window by window on a fresh SQLite
server, with settings changed, to find what makes the tail of a long run.

    .venv/bin/python bench/tail_probe.py RATE SECONDS [--closed-first S] [SOLDER_X=V ...]

For instance `SOLDER_COMPACTION_SWEEP_SECONDS=60` brings the compaction sweep's
training and recompression into a short run; `SOLDER_LOG_DICTIONARIES=false` leaves
them out. `--closed-first S` runs 32 clients in a closed loop for S seconds before the
open loop: with `--closed-first 190 SOLDER_COMPACTION_SWEEP_SECONDS=100`, the sweep
trains at 100 s and recompresses the logs written before the dictionary (some 20,000
to 30,000) as the open loop starts (bench/RESULTS.md, scenario 2).

To measure another version of Solder, run this from that version's work tree (with
it on `PYTHONPATH` for the child processes): the server starts as `python -m solder`,
which imports Solder from the working directory before `PYTHONPATH`.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import solder_stack
from runs import Bench

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("rate", type=float, help="the open loop's runs a second")
parser.add_argument("seconds", type=float, help="the open loop's length")
parser.add_argument("settings", nargs="*", metavar="SOLDER_X=V", help="settings changed")
parser.add_argument("--closed-first", type=float, default=0.0, metavar="S")
args = parser.parse_intermixed_args()
rate, seconds, closed_first = args.rate, args.seconds, args.closed_first
settings = dict(arg.split("=", 1) for arg in args.settings)

with (
    tempfile.TemporaryDirectory(prefix="solder-tail-") as tmp,
    solder_stack("SQLite", None, Path(tmp), workers=0, upstream=True, settings=settings) as stack,
):
    bench = Bench(stack, Path(tmp))
    if closed_first:
        print(f"closed loop first: {bench.closed(closed_first).rate:,.0f} runs/s")
    latency = bench.open(rate, seconds)
    print(
        f"{settings or 'defaults'}: {latency.executions:,} runs at {latency.rate:,.0f}/s, "
        f"p50 {latency.p50:,.0f} ms, p99 {latency.p99:,.0f} ms; slowest 10 s windows: "
        + ", ".join(f"{at:.0f} s: {p99:,.0f} ms" for at, p99 in latency.slowest)
    )
    print((Path(tmp) / "serve.log").read_text()[-1500:])

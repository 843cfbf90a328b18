"""A diagnostic beside scenario 2: the open loop's p99 window by window on a fresh SQLite
server, with settings changed, to find what makes the tail of a long run.

    .venv/bin/python bench/tail_probe.py RATE SECONDS [--closed-first S] [--profile FILE]
        [--cpu] [SOLDER_X=V ...]

For instance `SOLDER_COMPACTION_SWEEP_SECONDS=60` brings the compaction sweep's
training and recompression into a short run; `SOLDER_LOG_DICTIONARIES=false` leaves
them out. `--closed-first S` runs 32 clients in a closed loop for S seconds before the
open loop: with `--closed-first 190 SOLDER_COMPACTION_SWEEP_SECONDS=100`, the sweep
trains at 100 s and recompresses the logs written before the dictionary (some 20,000
to 30,000) as the open loop starts (bench/RESULTS.md, scenario 2). `--profile FILE`
records the server with py-spy through the open loop (speedscope's format, idle samples
kept, so that the samples make a timeline); bench/timeline.py reads it. `--cpu` prints
the cores each part of the machine used through the open loop, 10 s at a time: the
server, its children (the compaction's training and recompressing), the upstream, the
load generator, py-spy, and everything else. `SOLDER_PROCESSES=2` serves with
`solder serve --processes 2`: `--profile` records its first process, `--cpu` counts them
all as the server.

To measure another version of Solder, run this from that version's work tree (with
it on `PYTHONPATH` for the child processes): the server starts as `python -m solder`,
which imports Solder from the working directory before `PYTHONPATH`.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import solder_stack
from runs import TAIL_WINDOW_SECONDS, Bench
from scale_out import cpu_seconds, machine_busy_seconds

PROFILE_HZ = 100
ROLES = {  # a word of a process's command line: its part
    "loadgen.py": "load generator",
    "scale_out.py": "upstream",
    "solder.recompressing": "children",
    "solder.training": "children",
    "py-spy": "py-spy",
}


def cpu_by_role(servers: set[int]) -> dict[str, float]:
    """CPU seconds used so far by each part of the machine (the processes alive now)."""
    spent: dict[str, float] = collections.defaultdict(float)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        role = "server" if int(entry.name) in servers else None
        role = role or next((part for word, part in ROLES.items() if word in command), None)
        if role:
            spent[role] += cpu_seconds(int(entry.name))
    spent["machine"] = machine_busy_seconds()
    return spent


class CpuWatch(threading.Thread):
    """Each part's cores, window by window (a process that ends mid-window loses that
    window's share; the machine's total counts it)."""

    def __init__(self, servers: set[int]) -> None:
        super().__init__(daemon=True)
        self.servers, self.stopped = servers, threading.Event()
        self.windows: list[dict[str, float]] = []

    def run(self) -> None:
        before, seen = cpu_by_role(self.servers), time.monotonic()
        while not self.stopped.wait(TAIL_WINDOW_SECONDS):
            now, at = cpu_by_role(self.servers), time.monotonic()
            cores = {
                role: max(0.0, now[role] - before.get(role, now[role])) / (at - seen)
                for role in now
            }
            cores["others"] = cores.pop("machine") - sum(cores.values())
            self.windows.append(cores)
            before, seen = now, at

    def report(self) -> str:
        roles = ["server", "children", "upstream", "load generator", "py-spy", "others"]
        lines = ["cores by 10 s window: " + ", ".join(roles) + ", all"]
        for n, cores in enumerate(self.windows):
            each = [cores.get(role, 0.0) for role in roles]
            lines.append(
                f"  {n * TAIL_WINDOW_SECONDS:4.0f} s: "
                + " ".join(f"{value:4.2f}" for value in each)
                + f"  {sum(each):4.2f}"
            )
        return "\n".join(lines)


parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("rate", type=float, help="the open loop's runs a second")
parser.add_argument("seconds", type=float, help="the open loop's length")
parser.add_argument("settings", nargs="*", metavar="SOLDER_X=V", help="settings changed")
parser.add_argument("--closed-first", type=float, default=0.0, metavar="S")
parser.add_argument("--profile", type=Path, metavar="FILE", help="py-spy's record of the open loop")
parser.add_argument("--cpu", action="store_true", help="each part's cores through the open loop")
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
    # The process profiled: `solder serve`, or the first of `solder serve --processes`'.
    pids = stack.server_pids()
    serving = pids.get("solder serve") or pids["process 1"]
    spy = None
    if args.profile:
        py_spy = shutil.which("py-spy", path=Path(sys.executable).parent) or shutil.which("py-spy")
        if py_spy is None:
            sys.exit("--profile needs py-spy: .venv/bin/pip install py-spy")
        # Not blocking: the server is not stopped for each sample, so its latency stays its own.
        spy = subprocess.Popen(
            [
                *(py_spy, "record", "--pid", str(serving)),
                *("--rate", str(PROFILE_HZ), "--idle", "--nonblocking", "--format", "speedscope"),
                *("--duration", str(round(seconds)), "--output", str(args.profile)),
            ],
            stdout=subprocess.DEVNULL,
        )
    watch = CpuWatch(set(pids.values())) if args.cpu else None
    if watch is not None:
        watch.start()
    latency = bench.open(rate, seconds)
    if watch is not None:
        watch.stopped.set()
        watch.join()
    if spy is not None and spy.wait(timeout=60) != 0:
        sys.exit(f"py-spy failed (exit code {spy.returncode})")
    print(
        f"{settings or 'defaults'}: {latency.executions:,} runs at {latency.rate:,.0f}/s, "
        f"p50 {latency.p50:,.0f} ms, p99 {latency.p99:,.0f} ms; slowest 10 s windows: "
        + ", ".join(f"{at:.0f} s: {p99:,.0f} ms" for at, p99 in latency.slowest)
    )
    if watch is not None:
        print(watch.report())
    if spy is not None:
        # py-spy not blocking may take fewer samples than its rate: the length places them.
        print(
            f"the profile: .venv/bin/python bench/timeline.py {args.profile} --seconds {seconds:g}"
        )
    print((Path(tmp) / "serve.log").read_text()[-1500:])

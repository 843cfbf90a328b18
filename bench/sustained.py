"""A diagnostic beside scenarios 2 and 6: the closed loop of runs.py on SQLite for a long
window, with the queue, the WAL, the database file and the server's RSS every 10 s, to
see whether the server keeps up (done as fast as accepted) and stays bounded.

    cd bench && ../.venv/bin/python sustained.py [SECONDS]
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import rss_bytes, solder_stack
from runs import CLIENTS, Bench

SECONDS = float(sys.argv[1]) if len(sys.argv) > 1 else 240.0

with tempfile.TemporaryDirectory(prefix="solder-diag-") as tmp:
    workdir = Path(tmp)
    with solder_stack("SQLite", None, workdir, workers=0, upstream=True) as stack:
        bench = Bench(stack, workdir)
        done = threading.Event()

        def load() -> None:
            try:
                bench.load(SECONDS, clients=CLIENTS)
            finally:
                done.set()

        threading.Thread(target=load, daemon=True).start()
        db = sqlite3.connect(f"file:{workdir / 'solder.db'}?mode=ro", uri=True)
        started, last = time.monotonic(), None
        while True:
            time.sleep(10)
            counts = dict(db.execute("SELECT status, count(*) FROM executions GROUP BY status"))
            wal = Path(f"{workdir / 'solder.db'}-wal")
            t = time.monotonic() - started
            done_now = counts.get("succeeded", 0)
            total = sum(counts.values())
            if last is not None:
                rate_done = (done_now - last[1]) / (t - last[0])
                rate_in = (total - last[2]) / (t - last[0])
            else:
                rate_done = rate_in = 0.0
            print(
                f"{t:6.0f} s  accepted/s {rate_in:6.0f}  done/s {rate_done:6.0f}  "
                f"queued {counts.get('queued', 0):7d}  running {counts.get('running', 0):4d}  "
                f"wal {wal.stat().st_size / 2**20 if wal.exists() else 0:7.1f} MB  "
                f"db {(workdir / 'solder.db').stat().st_size / 2**20:7.1f} MB  "
                f"rss {rss_bytes(stack.api.process.pid) / 2**20:5.0f} MB",
                flush=True,
            )
            last = (t, done_now, total)
            if done.is_set() and counts.get("queued", 0) == 0:
                break
            if t > SECONDS + 120:
                break
        log = workdir / "serve.log"
        print(log.read_text()[-2000:] if log.exists() else "")

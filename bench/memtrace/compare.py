"""What grew in a process's heap between its first snapshot and its last (see
sitecustomize.py): the top allocation sites by growth, with their tracebacks.

    python bench/memtrace/compare.py MEMTRACE_DIR PID [TOP]
"""

from __future__ import annotations

import sys
import tracemalloc
from pathlib import Path

directory, pid = Path(sys.argv[1]), sys.argv[2]
top = int(sys.argv[3]) if len(sys.argv) > 3 else 15
snaps = sorted(directory.glob(f"{pid}-*.snap"))
if len(snaps) < 2:
    sys.exit(f"{directory} holds {len(snaps)} snapshot(s) of process {pid}: two are needed")
ignore = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen*")]
first = tracemalloc.Snapshot.load(str(snaps[0])).filter_traces(ignore)
for snap in snaps[1:]:
    later = tracemalloc.Snapshot.load(str(snap)).filter_traces(ignore)
    total = sum(s.size for s in later.statistics("filename")) / 2**20
    print(f"{snap.name}: {total:.1f} MB traced")
last = later
print(f"\nGrowth from {snaps[0].name} to {snaps[-1].name}, by traceback:\n")
for stat in last.compare_to(first, "traceback")[:top]:
    print(f"{stat.size_diff / 2**10:+9.0f} KiB  {stat.count_diff:+7d} blocks")
    for line in stat.traceback.format(limit=12, most_recent_first=True):
        print(f"    {line}")
    print()

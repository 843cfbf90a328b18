"""Where a benchmark's server grows (scenario 6): heap figures every minute.

Put this directory on `PYTHONPATH` and set `MEMTRACE_DIR`: every Python process started
so (with `MEMTRACE_ARG` set, only those with that word among their arguments, such as
`serve`) writes, every `MEMTRACE_SECONDS` (60 by default), one line of figures to
`<dir>/<pid>.txt`: its RSS, the bytes malloc holds in use and free (glibc's mallinfo2,
which counts SQLite's and zstd's allocations too), the blocks Python's allocator holds,
the objects the garbage collector tracks, its collections in that minute (count and
longest pause, by generation), and the types whose count changed most since the first
line. With `MEMTRACE_FRAMES` set it also traces Python's allocations with
`tracemalloc` (that many frames; slow: not for figures) and dumps a snapshot each time,
for `compare.py`.

    PYTHONPATH=bench/memtrace MEMTRACE_DIR=/tmp/mem MEMTRACE_ARG=serve \\
        .venv/bin/python bench/sustained.py 600
"""

from __future__ import annotations

import collections
import ctypes
import gc
import os
import sys
import threading
import time
import tracemalloc

_DIR = os.environ.get("MEMTRACE_DIR")


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _malloc() -> tuple[float, float, float]:
    """MB that malloc has handed out (its arenas and mmaps), and holds free."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return info.uordblks / 2**20, info.hblkhd / 2**20, info.fordblks / 2**20


def _rss() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


_pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
_gc_started = 0.0


def _on_gc(phase: str, info: dict[str, int]) -> None:
    global _gc_started
    if phase == "start":
        _gc_started = time.perf_counter()
    else:
        _pauses[info["generation"]].append(time.perf_counter() - _gc_started)


def _gc_figures() -> str:
    figures = []
    for generation, pauses in _pauses.items():
        longest = max(pauses, default=0.0) * 1000
        figures.append(f"gen{generation} {len(pauses)}x max {longest:.1f} ms")
        pauses.clear()
    return ", ".join(figures)


def _types() -> collections.Counter[str]:
    return collections.Counter(type(o).__name__ for o in gc.get_objects())


def _watch(directory: str, frames: int) -> None:
    n, first = 0, None
    path = os.path.join(directory, f"{os.getpid()}.txt")
    while True:
        time.sleep(float(os.environ.get("MEMTRACE_SECONDS", "60")))
        n += 1
        types = _types()
        first = first or types
        grown = (types - first).most_common(8)
        used, mapped, free = _malloc()
        line = (
            f"{n:3d} rss {_rss():6.1f} MB  malloc used {used:6.1f} mmapped {mapped:6.1f} "
            f"free {free:6.1f} MB  python blocks {sys.getallocatedblocks():9d}  "
            f"gc objects {sum(types.values()):8d}  collections {_gc_figures()}  grown {grown}"
        )
        with open(path, "a") as out:
            print(line, file=out)
        if frames:
            tracemalloc.take_snapshot().dump(os.path.join(directory, f"{os.getpid()}-{n:03d}.snap"))


if _DIR and os.environ.get("MEMTRACE_ARG", "") in ("", *sys.argv):
    os.makedirs(_DIR, exist_ok=True)
    _frames = int(os.environ.get("MEMTRACE_FRAMES", "0"))
    if _frames:
        tracemalloc.start(_frames)
    gc.callbacks.append(_on_gc)
    threading.Thread(target=_watch, args=(_DIR, _frames), name="memtrace", daemon=True).start()

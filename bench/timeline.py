"""A py-spy profile read as a timeline: where a server's thread was busy, second by second,
and on what (bench/tail_probe.py --profile writes one).

    .venv/bin/python bench/timeline.py PROFILE [--seconds S] [--top N]

py-spy's speedscope format keeps each thread's samples in the order taken, one every
1/rate s (not blocking, it may take fewer: `--seconds`, the recording's length, spreads
them over it); recorded with `--idle`, a thread waiting is sampled too, so the samples make a
timeline. A sample is idle when the thread waits: its innermost frame is one of the
waits below (the event loop polling, a thread waiting for work or a lock). Printed for
each thread busy in at least 1 % of its samples: its share busy; the functions it spent
that time in (self: the innermost frame; total: anywhere on the stack, Solder's own and
the libraries' entry points); and its busiest seconds with what filled them.
"""

from __future__ import annotations

import argparse
import collections
import linecache
from pathlib import Path
from typing import Any

import orjson

# The innermost frames of a thread that waits, by the function's name (py-spy shows a C
# function by its Python caller: uvloop polling shows as `Runner.run`, the loop's entry).
IDLE = {
    "Runner.run",
    "run_forever",
    "BaseEventLoop.run_forever",
    "BaseEventLoop.run_until_complete",
    "_worker",
    "Condition.wait",
    "Event.wait",
    "Thread._wait_for_tstate_lock",
    "select",
    "EpollSelector.select",
    "sleep",
}
# Frames on nearly every stack (the command line, the loop's entry, a thread's start),
# left out of the totals.
AROUND = (
    "typer/",
    "_click/",
    "runpy",
    "asyncio/runners",
    "uvloop/__init__",
    "solder/cli.py",
    "solder/__main__",
    "threading.py",
    "futures/thread.py",
)


def frame_name(frame: dict[str, Any]) -> str:
    file = Path(frame.get("file") or "?")
    return f"{frame['name']} ({file.parent.name}/{file.name}:{frame.get('line') or ''})"


def is_idle(frame: dict[str, Any]) -> bool:
    if frame["name"] == "_connection_worker_thread":
        # aiosqlite's thread: waiting on its queue when on the line that takes from it
        # (a statement runs in C on another of its lines).
        line = linecache.getline(frame.get("file") or "", frame.get("line") or 0)
        return ".get(" in line
    return frame["name"] in IDLE


Window = tuple[int, list[list[int]], list[list[int]]]


def windows(samples: list[list[int]], idle: set[int], hz: float, seconds: float) -> list[Window]:
    """The samples in windows of `seconds`: (start, all of them, the busy ones)."""
    by_start: dict[int, tuple[list[list[int]], list[list[int]]]] = {}
    for n, sample in enumerate(samples):
        every, busy = by_start.setdefault(int(n / hz / seconds), ([], []))
        every.append(sample)
        if sample and sample[-1] not in idle:
            busy.append(sample)
    return [(int(at * seconds), *window) for at, window in sorted(by_start.items())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=12, help="functions and seconds listed")
    parser.add_argument(
        "--seconds",
        type=float,
        help="the recording's length (py-spy not blocking may take fewer samples than its "
        "rate: the seconds are then the samples spread over this length); by default, "
        "the samples at 100 a second",
    )
    args = parser.parse_args()
    data = orjson.loads(args.profile.read_bytes())
    frames = data["shared"]["frames"]
    names = [frame_name(frame) for frame in frames]
    idle = {n for n, frame in enumerate(frames) if is_idle(frame)}
    around = {
        n for n, frame in enumerate(frames) if any(a in (frame.get("file") or "") for a in AROUND)
    }
    for profile in data["profiles"]:
        samples: list[list[int]] = profile["samples"]
        hz = len(samples) / args.seconds if args.seconds else 100.0
        busy = [sample for sample in samples if sample and sample[-1] not in idle]
        if len(busy) < 0.01 * len(samples):
            continue

        print(
            f"\n{profile['name']}: {len(samples):,} samples ({len(samples) / hz:.0f} s),"
            f" busy in {len(busy) / len(samples):.0%}"
        )
        own = collections.Counter(names[sample[-1]] for sample in busy)
        anywhere: collections.Counter[str] = collections.Counter()
        for sample in busy:
            anywhere.update({names[n] for n in sample if n not in around})
        print("  self:")
        for name, count in own.most_common(args.top):
            print(f"    {count / len(samples):6.1%}  {name}")
        print("  total (the thread's busy samples with the function anywhere on the stack):")
        for name, count in anywhere.most_common(args.top * 3):
            print(f"    {count / len(busy):6.1%}  {name}")
        shares = (
            f"{len(busy_in) / len(every):.0%}"
            for _, every, busy_in in windows(samples, idle, hz, 10)
        )
        print("  busy share by 10 s:", " ".join(shares))
        print("  busiest seconds (busy share, then the commonest innermost frames):")
        ranked = sorted(windows(samples, idle, hz, 1), key=lambda window: -len(window[2]))
        for second, every, busy_in in ranked[: args.top]:
            common = collections.Counter(names[s[-1]] for s in busy_in).most_common(3)
            print(
                f"    {second:4d} s  {len(busy_in) / len(every):4.0%}  "
                + "; ".join(f"{count} {name}" for name, count in common)
            )


if __name__ == "__main__":
    main()

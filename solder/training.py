"""A tenant's log dictionary trained in a child process (`python -m solder.training`).

Training decompresses a sample of some 4,000 stored logs, trains zstd dictionaries on
them and judges each on the held-out logs: seconds of CPU, much of it Python holding
the GIL, and some 10 MB of memory. In the server's process that stalled the event loop
under load (the open loop's slowest windows, 1.7 s, followed the training) and left the
C heap 6.8 MB larger for good (bench/RESULTS.md, scenarios 2 and 6). In a child it
takes the GIL from nobody, runs at a lower priority than the server (`nice` 10), and its
memory goes when it exits.

The parent writes a pickled `Request` to the child's standard input, then the stored
logs to train on, read from the database a few hundred at a time (the parent never
holds the whole sample), then None; it reads one pickled `Trained` (or `Untrainable`)
from the child's standard output. This module imports only the codec (and
solder/children.py, without asyncio), so the child starts in some 60 ms.
"""

from __future__ import annotations

import pickle
import random
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import zstandard

from solder import children
from solder.errors import LogUnreadable
from solder.store import codec
from solder.store.codec import Dictionary

DICTIONARY_BYTES = 16_384
HELD_OUT = 8  # one sample log in HELD_OUT judges the dictionary instead of training it
CANDIDATES = 4  # dictionaries trained each time, the best on the held-out logs kept


@dataclass(frozen=True)
class Request:
    """The dictionaries a tenant's stored logs may need (by id), and which of them is its
    current one. The stored logs to train on follow it, a list at a time, then None."""

    dictionaries: Mapping[int, bytes]
    current: int | None


@dataclass(frozen=True)
class Trained:
    """A trained dictionary, with the mean stored size of the held-out logs before
    (with the current dictionary, or the skeleton) and after (with this one)."""

    content: bytes
    before: float
    after: float
    readable: int
    """How many of the stored logs could be read (and were trained or judged on)."""
    trained_on: int


@dataclass(frozen=True)
class Untrainable:
    """zstd could train no dictionary on these logs (too few, or too alike)."""

    readable: int
    reason: str


def handle(request: Request, stored: Iterable[bytes]) -> Trained | Untrainable:
    """Train on `stored` logs as the compaction sweep does (the child calls it)."""
    known = {id_: Dictionary("", id_, content) for id_, content in request.dictionaries.items()}
    documents = [d for d in (readable(log, known) for log in stored) if d is not None]
    current = known[request.current] if request.current is not None else None
    try:
        content, before, after = train(documents, current)
    except zstandard.ZstdError as exc:
        return Untrainable(len(documents), str(exc))
    trained_on = len(documents) - len(documents[::HELD_OUT])
    return Trained(content, before, after, len(documents), trained_on)


def readable(stored: bytes, known: Mapping[int, Dictionary]) -> bytes | None:
    """A stored log as its JSON document, or None if it cannot be read."""
    needed = codec.dictionary_id(stored)
    try:
        return codec.unpack(stored, None if needed is None else known.get(needed))
    except (LogUnreadable, zstandard.ZstdError):
        return None


def train(documents: Sequence[bytes], current: Dictionary | None) -> tuple[bytes, float, float]:
    """A dictionary trained on most of `documents` (log documents of one tenant); the
    mean size of the others stored with `current` (None: the skeleton), then with it.

    zstd's trainer gives dictionaries a few bytes a log apart from one order of the same
    samples to another (107 to 113 bytes a seed-shaped log): `CANDIDATES` are trained,
    on the samples in as many orders, and the one that stores the held-out logs smallest
    is kept (bench/RESULTS.md, scenario 4).
    """
    held_out = documents[::HELD_OUT]
    training = [doc for n, doc in enumerate(documents) if n % HELD_OUT]
    best: tuple[float, bytes] | None = None
    for order in range(CANDIDATES):
        if order:
            random.Random(order).shuffle(training)
        content = codec.train(training, DICTIONARY_BYTES)
        candidate = Dictionary("", 1, content)
        size = statistics.mean(len(codec.pack(doc, candidate)) for doc in held_out)
        if best is None or size < best[0]:
            best = (size, content)
    assert best is not None
    before = statistics.mean(len(codec.pack(doc, current)) for doc in held_out)
    return best[1], before, best[0]


def main() -> None:
    children.lower_priority()
    # This file runs as `__main__`: the classes pickled both ways are solder.training's.
    from solder import training

    messages = pickle.Unpickler(sys.stdin.buffer)  # noqa: S301 (from the parent that started us)
    request = messages.load()
    if not isinstance(request, training.Request):
        raise SystemExit(f"expected a solder.training.Request, got {type(request).__name__}")
    stored: list[bytes] = []
    while (logs := messages.load()) is not None:
        stored += logs
    result = training.handle(request, stored)
    pickle.dump(result, sys.stdout.buffer, protocol=pickle.HIGHEST_PROTOCOL)
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    main()

"""Identifiers and timestamps in the shapes the Alloy API uses."""

from __future__ import annotations

import functools
import hashlib
import os
import re
import secrets
import threading
import time
import uuid
from datetime import UTC, datetime

_NANOID_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-"
OBJECT_ID = re.compile(r"^[0-9a-f]{24}$")


def object_id() -> str:
    """A 24-character lowercase hex id: 4 bytes of seconds then 8 random bytes, like Mongo's."""
    return f"{int(time.time()):08x}{secrets.token_hex(8)}"


def execution_id() -> str:
    """A 21-character URL-safe id: the time in milliseconds, then 72 random bits.

    The first nine characters are the milliseconds since the epoch in base 36 (digits
    and lowercase letters: every collation sorts them alike, until the year 5188), the
    other twelve drawn from nanoid's 64 symbols. Ids of executions recorded together
    sort together, so the entries a run adds to the primary key land on its last pages,
    not on a page anywhere in it: after a checkpoint, PostgreSQL writes each page it
    changes whole to its WAL once (docs/decisions.md, "Execution ids begin with their
    time"). 72 random bits in one millisecond do not meet (a chance in 10^11 for 262,144
    ids recorded in the same one).
    """
    return time_prefix(now_ms()) + random_chars(21 - _TIME_DIGITS)


def random_chars(count: int) -> str:
    """`count` URL-safe random characters, 6 bits each, like nanoid's."""
    # 64 symbols: the low 6 bits of a random byte pick one, uniformly.
    return "".join([_NANOID_ALPHABET[byte & 63] for byte in _random_bytes(count)])


_TIME_DIGITS = 9
_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


@functools.lru_cache(maxsize=1)
def time_prefix(ms: int) -> str:
    """How an execution id recorded at `ms` (milliseconds since the epoch) begins."""
    digits = []
    for _ in range(_TIME_DIGITS):
        ms, digit = divmod(ms, 36)
        digits.append(_BASE36[digit])
    return "".join(reversed(digits))


def item_id() -> str:
    """A random (version 4) UUID for an item or a block."""
    return _uuid_text(_random_bytes(16), 4)


def name_uuid(namespace: uuid.UUID, name: str) -> str:
    """`str(uuid.uuid5(namespace, name))`: the same UUID, for a name in a namespace."""
    return _uuid_text(
        hashlib.sha1(namespace.bytes + name.encode(), usedforsecurity=False).digest(), 5
    )


def _uuid_text(raw: bytes, version: int) -> str:
    """The first 16 bytes of `raw` as a UUID of `version` (RFC 4122's variant), in its
    usual text: what `str(uuid.UUID(bytes=..., version=...))` gives, in a third of the
    time (every item of every step has one: bench/RESULTS.md)."""
    data = bytearray(raw[:16])
    data[6] = (data[6] & 0x0F) | (version << 4)
    data[8] = (data[8] & 0x3F) | 0x80
    text = data.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


class _Entropy:
    """The OS's randomness, read 4 KiB at a time.

    Every item of every step has an id: one `os.urandom` call each (uuid4's way) was a
    tenth of the engine's time per block. The bytes are as random; they are only read
    in bulk, and never handed out twice (a lock guards the buffer; a forked child
    starts with an empty one).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buffer = b""
        self._offset = 0
        os.register_at_fork(after_in_child=self._forget)

    def take(self, count: int) -> bytes:
        with self._lock:
            if self._offset + count > len(self._buffer):
                self._buffer, self._offset = os.urandom(4096), 0
            chunk = self._buffer[self._offset : self._offset + count]
            self._offset += count
            return chunk

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._buffer, self._offset = b"", 0


_random_bytes = _Entropy().take


def now_ms() -> int:
    """Milliseconds since the Unix epoch: how Solder stores every timestamp."""
    return time.time_ns() // 1_000_000


def iso_ms(ms: int | None) -> str | None:
    """Milliseconds since the epoch as ISO-8601 UTC with milliseconds and Z."""
    if ms is None:
        return None
    seconds, millis = divmod(ms, 1000)
    return f"{_iso_second(seconds)}{millis:03d}Z"


@functools.lru_cache(maxsize=1024)
def _iso_second(seconds: int) -> str:
    # The timestamps of a log fall in few seconds: `strftime` was 2 % of a loaded server's
    # time a run (bench/RESULTS.md, scenario 2), a cache hit is a dictionary lookup.
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.")


def lease_id(holder: str = "") -> str:
    """A token for one claim of an execution (see `store/queue.py`), 21 characters that
    start with `holder`'s (the claiming process's token on SQLite: `store/lock.py`)."""
    return holder + random_chars(21 - len(holder))

"""Identifiers and timestamps in the shapes the Alloy API uses."""

from __future__ import annotations

import re
import secrets
import time
import uuid
from datetime import UTC, datetime

_NANOID_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-"
OBJECT_ID = re.compile(r"^[0-9a-f]{24}$")


def object_id() -> str:
    """A 24-character lowercase hex id: 4 bytes of seconds then 8 random bytes, like Mongo's."""
    return f"{int(time.time()):08x}{secrets.token_hex(8)}"


def execution_id() -> str:
    """A 21-character URL-safe random id (126 bits), like nanoid's default."""
    return "".join(secrets.choice(_NANOID_ALPHABET) for _ in range(21))


def item_id() -> str:
    """A random UUID for an item or a block."""
    return str(uuid.uuid4())


def now_ms() -> int:
    """Milliseconds since the Unix epoch: how Solder stores every timestamp."""
    return time.time_ns() // 1_000_000


def iso_ms(ms: int | None) -> str | None:
    """Milliseconds since the epoch as ISO-8601 UTC with milliseconds and Z."""
    if ms is None:
        return None
    seconds, millis = divmod(ms, 1000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{millis:03d}Z"


def lease_id() -> str:
    """A token for one claim of an execution (see `store/queue.py`)."""
    return execution_id()

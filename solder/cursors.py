"""Cursors for paging logs: where a page ended, so the next one starts there at any depth.

A cursor is opaque to clients: base64url of `<d|a><u|w>:<position>`, the order it was
made for, the listing (one user's logs, or the workflow's of all users: each has its own
positions, schema.py `log_listings`) and the position of the last execution of its page.
The next page is everything past that position in that order, one seek in a positions
index however deep it is, and stable while new executions arrive.

Cursors of Solder 0.x before log positions (`<d|a>:<startedAt>:<seq>`), and before
integer keys, are refused with the same 400 as any cursor Solder did not make: start
again from page 1 (docs/decisions.md).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from solder.errors import InvalidRequest

# 18 digits at most: a position and its neighbour stay within 64-bit integers.
_FORMAT = re.compile(r"^([da])([uw]):(\d{1,18})$")


@dataclass(frozen=True, slots=True)
class Cursor:
    descending: bool
    by_user: bool
    position: int

    def encode(self) -> str:
        text = f"{'d' if self.descending else 'a'}{'u' if self.by_user else 'w'}:{self.position}"
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode(text: str) -> Cursor:
    """The cursor a client sent back, or a 400 that says where to get a good one."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    match = _FORMAT.match(raw)
    if match is None:
        raise InvalidRequest(
            "cursor is not one Solder made: pass the nextCursor of a previous page as it is"
        )
    return Cursor(match[1] == "d", match[2] == "u", int(match[3]))

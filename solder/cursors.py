"""Cursors for paging logs: where a page ended, so the next one starts there at any depth.

A cursor is opaque to clients: base64url of `<d|a>:<startedAt ms>:<seq>`, the order it
was made for and the last execution of its page (its start, and its place in the table,
which breaks ties between executions started in the same millisecond). The next page is
everything strictly after that (startedAt, seq) in that order, one range scan of the
logs index however deep it is, and stable while new executions arrive.

Cursors of Solder 0.x before integer keys named the execution id instead: they are
refused with the same 400 as any cursor Solder did not make (docs/decisions.md).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from solder.errors import InvalidRequest

_FORMAT = re.compile(r"^([da]):(\d{1,16}):(\d{1,19})$")


@dataclass(frozen=True, slots=True)
class Cursor:
    descending: bool
    started_at: int
    seq: int

    def encode(self) -> str:
        text = f"{'d' if self.descending else 'a'}:{self.started_at}:{self.seq}"
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
    return Cursor(match[1] == "d", int(match[2]), int(match[3]))

"""Log dictionaries: each tenant's stored logs are compressed with a zstd dictionary
trained on its own logs (solder/compaction.py trains them; solder/store/codec.py is
the format).

A dictionary belongs to one tenant: it is trained on that tenant's logs only, used for
that tenant's logs only, and deleted with the tenant. This module is what one process
keeps of them:

- Writers (the engine's end of an execution) ask for a tenant's current dictionary, its
  newest, from memory (`current`): never a database round trip. A background task
  reloads the list every `REFRESH_SECONDS`, so a new dictionary is written with within
  seconds everywhere. A process that has not reloaded it for `STALE_SECONDS` (the
  database is unreachable) writes with the skeleton instead, which needs no dictionary:
  so `STALE_SECONDS` after a new dictionary is stored, no process writes with an older
  one, which the compaction sweep relies on before it deletes one.
- Readers (`unpack`) keep a decompressor per dictionary; one they have not met yet is
  loaded through the reader's own connection, once per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict

from solder.errors import LogUnreadable, Unavailable
from solder.store import codec
from solder.store import queries as q
from solder.store.codec import Dictionary
from solder.store.database import Database

log = logging.getLogger("solder.dictionaries")

REFRESH_SECONDS = 5.0
STALE_SECONDS = 15.0
# Dictionaries kept ready to decompress with (about 110 KB each: zstd's context and the
# digested dictionary): beyond, the least recently used is loaded again when next needed.
KEEP = 128
# Tenants whose compressor (about 100 KB) is kept, the most recent writers: another's is
# made again when it next ends an execution (some 30 µs).
KEEP_WRITING = 64


class Dictionaries:
    """The trained log dictionaries of one database, as this process uses them."""

    def __init__(self, db: Database, *, enabled: bool = True) -> None:
        self.db = db
        self.enabled = enabled
        """False: new logs are written with the built-in skeleton only (stored ones stay
        readable)."""
        self._current: dict[str, Dictionary] = {}
        self._fresh_until = 0.0  # time.monotonic(): `_current` may be used until then
        self._loaded: OrderedDict[tuple[str, int], Dictionary] = OrderedDict()
        self._writing: OrderedDict[str, None] = OrderedDict()
        self._task: asyncio.Task[None] | None = None

    def current(self, tenant_id: str) -> Dictionary | None:
        """The dictionary a tenant's new logs are written with; None: the skeleton's."""
        if not self.enabled or time.monotonic() > self._fresh_until:
            return None
        dictionary = self._current.get(tenant_id)
        if dictionary is not None:
            self._writing[tenant_id] = None
            self._writing.move_to_end(tenant_id)
            if len(self._writing) > KEEP_WRITING:
                idle, _ = self._writing.popitem(last=False)
                if (released := self._current.get(idle)) is not None:
                    released.release()
        return dictionary

    def pack(self, tenant_id: str, document: bytes) -> bytes:
        """A tenant's log document as it is stored."""
        return codec.pack(document, self.current(tenant_id))

    async def unpack(
        self, conn: q.Reader, tenant_id: str, stored: bytes, execution_id: str = ""
    ) -> bytes:
        """A stored log of `tenant_id` as JSON bytes; its dictionary loaded through `conn`
        the first time this process meets it."""
        needed = codec.dictionary_id(stored)
        if needed is None:
            return codec.unpack(stored)
        dictionary = self._loaded.get((tenant_id, needed))
        if dictionary is None:
            row = await q.dictionary(conn, tenant_id, needed)
            if row is None:
                log.error(
                    "the log of execution %s (tenant %s) needs dictionary %d, which is not in "
                    "the database",
                    execution_id,
                    tenant_id,
                    needed,
                )
                raise LogUnreadable(
                    f"the log of execution {execution_id} was compressed with dictionary "
                    f"{needed} of its tenant, which is no longer in the database: it cannot "
                    "be read"
                )
            dictionary = self._keep(Dictionary(tenant_id, needed, bytes(row["content"])))
        else:
            self._loaded.move_to_end((tenant_id, needed))
        return codec.unpack(stored, dictionary)

    def _keep(self, dictionary: Dictionary) -> Dictionary:
        self._loaded[(dictionary.tenant_id, dictionary.id)] = dictionary
        while len(self._loaded) > KEEP:
            self._loaded.popitem(last=False)
        return dictionary

    async def refresh(self) -> None:
        """Learn each tenant's newest dictionary; load the ones not known yet."""
        if not self.enabled:
            return
        asked = time.monotonic()
        async with self.db.read() as conn:
            newest = await q.newest_dictionaries(conn)
            current: dict[str, Dictionary] = {}
            for tenant_id, dictionary_id in newest.items():
                known = self._current.get(tenant_id)
                if known is None or known.id != dictionary_id:
                    row = await q.dictionary(conn, tenant_id, dictionary_id)
                    if row is None:  # deleted since (with its tenant)
                        continue
                    known = Dictionary(tenant_id, dictionary_id, bytes(row["content"]))
                current[tenant_id] = known
        self._current = current
        self._fresh_until = asked + STALE_SECONDS

    async def start(self) -> None:
        """Load the current dictionaries, then keep them current in the background."""
        await self.refresh()
        self._task = asyncio.create_task(self._refresh_forever(), name="solder-dictionaries")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            try:
                await self.refresh()
            except Unavailable:
                pass  # the writers keep what they have; the next refresh tries again
            except Exception:
                log.exception("reloading the log dictionaries failed")

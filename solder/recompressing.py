"""A tenant's stored logs recompressed with its newest dictionary, read and recompressed
in a child process (`python -m solder.recompressing`).

Recompressing reads every stored log of the tenant not on its newest dictionary (62,000
in ten minutes of scenario 2), decompresses each and compresses it again. In the
server's process that cost it 4.8 s of CPU for 55,000 logs, some of it Python holding
the GIL the event loop needs, and left its RSS 3.8 MB larger: the pages read and the
documents decompressed passed through its C heap, which keeps what it took. With the
reading and the recompressing in a child, the server spends 2.8 s (the writes) and
grows 2.5 MB (bench/recompress_probe.py); the child's memory (some 85 MB, most of it
the modules it imports) goes when it exits, and its CPU is on the other core, at a
lower priority than the server (`nice` 10).

The writes stay the server's: on SQLite the child writing would take the database's
write lock from outside the server, whose writers would then wait on SQLite's busy
handler instead of their turn on the process's own lock.

The parent writes a pickled `Request` to the child's standard input, then a byte each
time it wants the next batch; the child answers each with a frame (a 4-byte length,
then a pickled `Batch`, or None once every log is done). So the child reads a batch only
when asked, never ahead, and stops when its standard input closes (the parent gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import struct
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from solder import children, training
from solder.store import queries as q
from solder.store.codec import Dictionary
from solder.store.database import Database

FRAME = struct.Struct(">I")
ASK = b"?"


@dataclass(frozen=True)
class Request:
    """Recompress the stored logs of `tenant_id` not on its dictionary `current`,
    `batch` at a time, reading them from `database_url`; `dictionaries` (by id) are those
    the logs may be on."""

    database_url: str
    tenant_id: str
    dictionaries: Mapping[int, bytes]
    current: int
    batch: int


@dataclass(frozen=True)
class Batch:
    """Logs recompressed, as (execution id, stored log), to be written in one
    transaction; the ids of those read that could not be read (left as they are)."""

    rewritten: list[tuple[str, bytes]]
    unreadable: list[str] = field(default_factory=list)

    @property
    def read(self) -> int:
        return len(self.rewritten) + len(self.unreadable)


async def batches(db: Database, request: Request) -> AsyncGenerator[Batch, None]:
    """The tenant's logs not on its current dictionary, recompressed a batch at a time:
    workflow by workflow, through the workflow logs index, each batch read in a short
    transaction of its own."""
    known = {
        id_: Dictionary(request.tenant_id, id_, content)
        for id_, content in request.dictionaries.items()
    }
    current = known[request.current]
    try:
        async with db.read() as conn:
            workflow_ids = await q.tenant_workflow_ids(conn, request.tenant_id)
        for workflow_id in workflow_ids:
            after = 0
            while True:
                async with db.read() as conn:
                    rows = await q.logs_to_compact(
                        conn, request.tenant_id, workflow_id, after, current.prefix, request.batch
                    )
                if not rows:
                    break
                after = rows[-1]["workflow_position"]
                yield recompressed(rows, known, current)
                if len(rows) < request.batch:
                    break
    finally:
        # Their zstd contexts.
        for dictionary in known.values():
            dictionary.release()


def recompressed(
    rows: Sequence[Mapping[Any, Any]], known: Mapping[int, Dictionary], current: Dictionary
) -> Batch:
    """Each log of `rows` compressed with `current`, checked to read back the same."""
    batch = Batch([])
    for row in rows:
        document = training.readable(row["log"], known)
        if document is None:
            batch.unreadable.append(row["id"])
            continue
        stored = current.compress(document)
        if current.decompress(stored[len(current.prefix) :]) != document:
            raise AssertionError(f"recompressing execution {row['id']}'s log changed it")
        batch.rewritten.append((row["id"], stored))
    return batch


class RecompressionFailed(Exception):
    """The recompressing child ended without finishing."""


@contextlib.asynccontextmanager
async def apart(request: Request) -> AsyncIterator[AsyncIterator[Batch]]:
    """`batches` run in a child process: the batches it answers, as they come. Leaving
    the block before the last one (an error, the server stopping) kills the child."""
    started = await children.start("solder.recompressing")
    child, stdin, stdout = started.process, started.stdin, started.stdout
    complaint = asyncio.ensure_future(started.stderr.read())

    async def failed() -> RecompressionFailed:
        await child.wait()
        err = await complaint
        return RecompressionFailed(children.ended("recompressing", child.returncode, err))

    async def answers() -> AsyncGenerator[Batch, None]:
        while True:
            try:
                stdin.write(ASK)
                await stdin.drain()
                (size,) = FRAME.unpack(await stdout.readexactly(FRAME.size))
                answer = pickle.loads(await stdout.readexactly(size))  # noqa: S301 (our child)
            except (asyncio.IncompleteReadError, BrokenPipeError, ConnectionResetError):
                raise await failed() from None
            if answer is None:
                stdin.close()
                return
            if not isinstance(answer, Batch):
                raise RecompressionFailed(f"the child answered a {type(answer).__name__}")
            yield answer

    try:
        try:
            stdin.write(pickle.dumps(request, pickle.HIGHEST_PROTOCOL))
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            raise await failed() from None
        async with contextlib.aclosing(answers()) as answered:
            yield answered
        if await child.wait() != 0:
            raise await failed()
        await complaint
    finally:
        if child.returncode is None:
            complaint.cancel()
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            await child.wait()


def _send(out: BinaryIO, message: Batch | None) -> None:
    data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    out.write(FRAME.pack(len(data)) + data)
    out.flush()


async def _serve(request: Request, asks: BinaryIO, out: BinaryIO) -> None:
    db = Database(request.database_url, pool_size=1)
    try:
        async with contextlib.aclosing(batches(db, request)) as batched:
            while asks.read(1) == ASK:  # b"": the parent closed the pipe (or is gone)
                batch = await anext(batched, None)
                _send(out, batch)
                if batch is None:
                    return
    finally:
        await db.dispose()


def main() -> None:
    children.lower_priority()
    # This file runs as `__main__`: the classes pickled both ways are solder.recompressing's.
    from solder import recompressing

    request = pickle.load(sys.stdin.buffer)  # noqa: S301 (from the parent that started us)
    if not isinstance(request, recompressing.Request):
        raise SystemExit(f"expected a solder.recompressing.Request, got {type(request).__name__}")
    asyncio.run(recompressing._serve(request, sys.stdin.buffer, sys.stdout.buffer))


if __name__ == "__main__":
    main()

"""The load generator of scenario 2: `POST /run/workflow`, in a process of its own.

runs.py starts it (`python bench/loadgen.py SPEC OUT`); it is not meant to be run by
hand. SPEC is a JSON file saying where to send what and how:

- closed loop (`clients`): that many connections, each sending its next request as soon
  as the previous one is answered, for `seconds`;
- open loop (`rate`): one request every 1/rate s on a fixed schedule, whatever the
  answers (a slow answer does not delay the next request: it goes out on another
  connection, opened if none is idle), for `seconds`. Past `MAX_CONNECTIONS` requests
  on the wire, the next waits for an answer; its latency still counts from its
  scheduled time, so an overloaded server shows in the tail, and no request is dropped.

It speaks HTTP/1.1 over asyncio streams (uvloop) with keep-alive: no HTTP library, so
a request costs it about 0.1 ms of CPU (measured: 0.03 cores at 250 requests/s, its
start included), and one core would send several thousand a second. At Solder's rates
it uses 1 to 3 % of a core: it is not what limits the load (runs.py reports its CPU
use next to each figure, and how many open-loop requests went out late).

OUT receives, as JSON, every request: [scheduled ms, sent ms, answered ms, status,
executionId] (wall-clock ms, the clock the server stamps executions with), how many the
open loop scheduled, and the CPU seconds this process used.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import uvloop

IDLE_LIMIT = 2.0  # s: uvicorn drops connections idle for 5 s; reuse none older than this
MAX_CONNECTIONS = 512
Record = tuple[float, float, float, int, str]


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.used = time.monotonic()

    async def request(self, payload: bytes) -> tuple[int, bytes]:
        self.writer.write(payload)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await self.reader.readexactly(length)
        self.used = time.monotonic()
        return status, body

    def close(self) -> None:
        self.writer.close()


class Load:
    def __init__(self, spec: dict[str, Any]) -> None:
        url = urlsplit(spec["url"])
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        self.headers = (
            f"POST /run/workflow HTTP/1.1\r\nHost: {url.netloc}\r\n"
            f"Authorization: bearer {spec['key']}\r\nx-api-version: 2025-09\r\n"
            "Content-Type: application/json\r\n"
        ).encode()
        self.user, self.workflow = spec["userId"], spec["workflowId"]
        self.seconds: float = spec["seconds"]
        self.records: list[Record] = []
        self.errors: list[str] = []
        self.sent = 0
        self.scheduled = 0  # open loop: the requests its schedule holds

    def payload(self) -> bytes:
        self.sent += 1
        body = orjson.dumps(
            {"userId": self.user, "workflowId": self.workflow, "data": {"n": self.sent}}
        )
        return self.headers + b"Content-Length: %d\r\n\r\n" % len(body) + body

    async def connect(self) -> Connection:
        return Connection(*await asyncio.open_connection(self.host, self.port))

    async def send(self, connection: Connection, scheduled: float) -> bool:
        """One request; False when the connection is unusable after it."""
        payload = self.payload()
        sent = time.time() * 1000
        try:
            status, body = await connection.request(payload)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
            return False
        answered = time.time() * 1000
        execution = orjson.loads(body).get("executionId", "") if status == 200 else ""
        if status != 200 and len(self.errors) < 20:
            self.errors.append(f"{status} {body[:300].decode(errors='replace')}")
        self.records.append((scheduled or sent, sent, answered, status, execution))
        return True

    async def closed(self, clients: int) -> None:
        deadline = time.monotonic() + self.seconds

        async def client() -> None:
            connection = await self.connect()
            while time.monotonic() < deadline:
                if not await self.send(connection, 0.0):
                    connection.close()
                    connection = await self.connect()
            connection.close()

        await asyncio.gather(*(client() for _ in range(clients)))

    async def open(self, rate: float) -> None:
        idle: deque[Connection] = deque()
        pending: set[asyncio.Task[None]] = set()
        # At most this many requests on the wire: one scheduled past it waits for an
        # answer, and its latency, counted from its scheduled time, says so (none is
        # dropped: an overloaded server shows as its tail, not as fewer runs).
        outstanding = asyncio.Semaphore(MAX_CONNECTIONS)

        async def one(scheduled: float) -> None:
            async with outstanding:
                connection = None
                while idle:
                    candidate = idle.pop()
                    if time.monotonic() - candidate.used < IDLE_LIMIT:
                        connection = candidate
                        break
                    candidate.close()
                if connection is None:
                    connection = await self.connect()
                if await self.send(connection, scheduled):
                    idle.append(connection)
                else:
                    connection.close()

        start_wall, start = time.time() * 1000, time.monotonic()
        self.scheduled = int(self.seconds * rate)
        for n in range(self.scheduled):
            offset = n / rate
            delay = start + offset - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(start_wall + offset * 1000))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)
        for connection in idle:
            connection.close()


def main() -> int:
    spec = orjson.loads(Path(sys.argv[1]).read_bytes())
    load = Load(spec)
    started = time.time() * 1000
    if "rate" in spec:
        uvloop.run(load.open(float(spec["rate"])))
    else:
        uvloop.run(load.closed(int(spec["clients"])))
    ended = time.time() * 1000
    out = {
        "started": started,
        "ended": ended,
        "cpu": sum(os.times()[:2]),
        "scheduled": load.scheduled,
        "records": load.records,
        "errors": load.errors[:20],
    }
    Path(sys.argv[2]).write_bytes(orjson.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

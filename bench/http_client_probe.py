"""CPU a request of HTTP clients, and of scenario 2's loopback upstream they call.

    .venv/bin/python bench/http_client_probe.py [--concurrency 8] [--requests 5000] [--runs 3]

For each client (aiohttp as Solder's `http` connector uses it, httpx as it used it
before 2026-12-05), `--concurrency` tasks send `--requests` GETs in all to the upstream
of bench/scale_out.py over kept-alive connections. It prints the client's CPU a
request (this process), the upstream's (its process), and requests a second; medians
of `--runs`, the clients taking turns. A probe for bench/RESULTS.md, not part of
`make bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import uvloop
from rich.console import Console
from rich.table import Table
from scale_out import answers_http, cpu_seconds, free_port
from yarl import URL

from solder.network import HttpClient

Send = Callable[[int], Awaitable[None]]


async def drive(send: Send, requests: int, concurrency: int) -> None:
    numbers = iter(range(requests))

    async def task() -> None:
        for n in numbers:
            await send(n)

    await asyncio.gather(*(task() for _ in range(concurrency)))


async def with_aiohttp(url: str, requests: int, concurrency: int) -> None:
    client = HttpClient(allow_private=True, connections=100)

    async def send(n: int) -> None:
        answer = await client.request(
            "GET",
            URL(f"{url}/echo?n={n}"),
            headers={},
            body=None,
            wait_limit=30,
            limit=1 << 20,
        )
        assert answer.status == 200

    await drive(send, requests, concurrency)
    await client.close()


async def with_httpx(url: str, requests: int, concurrency: int) -> None:
    # As solder/connectors/http.py used it until 2026-12-05.
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=max(20, concurrency))
    async with httpx.AsyncClient(follow_redirects=False, limits=limits) as client:

        async def send(n: int) -> None:
            target = httpx.URL(f"{url}/echo").copy_merge_params({"n": str(n)})
            request = client.build_request("GET", target, timeout=30)
            response = await client.send(request, stream=True)
            try:
                [chunk async for chunk in response.aiter_bytes()]
            finally:
                await response.aclose()
            assert response.status_code == 200

        await drive(send, requests, concurrency)


CLIENTS = {"aiohttp": with_aiohttp, "httpx": with_httpx}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    table = Table(title=f"HTTP clients, {args.concurrency} requests at a time")
    for column in ("client", "client µs/request", "upstream µs/request", "req/s"):
        table.add_column(column, justify="left" if column == "client" else "right")
    port = free_port()
    script = str(Path(__file__).with_name("scale_out.py"))
    server = subprocess.Popen([sys.executable, script, "--upstream", str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        while not answers_http(f"{url}/echo?n=1"):
            time.sleep(0.05)
        figures: dict[str, list[tuple[float, float, float]]] = {name: [] for name in CLIENTS}
        for _ in range(args.runs):
            for name, client in CLIENTS.items():
                uvloop.run(client(url, 200, args.concurrency))  # connections, imports
                before = cpu_seconds(server.pid), time.process_time(), time.perf_counter()
                uvloop.run(client(url, args.requests, args.concurrency))
                after = cpu_seconds(server.pid), time.process_time(), time.perf_counter()
                figures[name].append(
                    (
                        (after[1] - before[1]) / args.requests * 1e6,
                        (after[0] - before[0]) / args.requests * 1e6,
                        args.requests / (after[2] - before[2]),
                    )
                )
        for name, runs in figures.items():
            mine, theirs, rate = (statistics.median(run[i] for run in runs) for i in range(3))
            table.add_row(name, f"{mine:,.0f}", f"{theirs:,.0f}", f"{rate:,.0f}")
    finally:
        server.kill()
        server.wait()
    Console().print(table)


if __name__ == "__main__":
    main()

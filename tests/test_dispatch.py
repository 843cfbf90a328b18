"""Embedded dispatch's backpressure: accepting a run waits while the queue is long and the
event loop saturated, and only then."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from solder import dispatch
from solder.app import Solder
from solder.dispatch import EmbeddedDispatcher
from tests import databases
from tests.conftest import settings_for

pytestmark = pytest.mark.skipif(
    databases.on_postgres(), reason="SQLite only: PostgreSQL's queue is procrastinate's"
)


async def settled(task: asyncio.Task[None]) -> bool:
    for _ in range(20):  # let the event loop run whatever is ready
        await asyncio.sleep(0)
    return task.done()


@asynccontextmanager
async def dispatcher_of(tmp_path: Path, workers: int) -> AsyncIterator[EmbeddedDispatcher]:
    """A dispatcher that measures its loop but runs nothing (no worker task)."""
    solder = Solder(settings_for(tmp_path, worker_concurrency=workers))
    assert isinstance(solder.dispatcher, EmbeddedDispatcher)
    await asyncio.to_thread(solder.db.migrate)
    probe = asyncio.create_task(solder.dispatcher.watch_lag())
    try:
        yield solder.dispatcher
    finally:
        probe.cancel()
        await solder.db.dispose()


async def saturate(seconds: float) -> None:
    """Keep the event loop busy, as a flood of requests does: 20 ms slices of work."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.02)  # noqa: ASYNC251 (blocking on purpose: a busy event loop)
        await asyncio.sleep(0)


def test_on_a_saturated_server_a_run_waits_while_the_queue_is_long(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with dispatcher_of(tmp_path, workers=2) as dispatcher:
            await saturate(0.5)
            dispatcher.notify()
            assert await settled(asyncio.create_task(dispatcher.room()))  # room for 2
            dispatcher.notify()
            waiting = asyncio.create_task(dispatcher.room())
            assert not await settled(waiting), "two queued for two workers: the third waits"
            await dispatcher.claim()  # a worker looks for work: the queue is empty
            assert await settled(waiting)

    asyncio.run(scenario())


def test_with_time_to_spare_a_burst_is_queued_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers waiting on a slow API leave the loop idle: runs are not held back then."""
    # An idle loop's probe can still wake a millisecond late on a shared machine running
    # other tests (it failed once so in CI, at the production mark of 1 ms): the mark
    # is raised above that noise, and far below the saturated tests' 20 ms slices.
    monkeypatch.setattr(dispatch, "_BUSY_LAG_SECONDS", 0.005)

    async def scenario() -> None:
        async with dispatcher_of(tmp_path, workers=1) as dispatcher:
            await asyncio.sleep(0.3)  # the probe sees an idle loop
            for _ in range(50):
                dispatcher.notify()
            assert await settled(asyncio.create_task(dispatcher.room()))

    asyncio.run(scenario())


def test_a_run_is_slowed_by_a_long_queue_never_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dispatch, "_MAX_WAIT_SECONDS", 0.05)

    async def scenario() -> None:
        async with dispatcher_of(tmp_path, workers=1) as dispatcher:
            await saturate(0.5)
            for _ in range(5):
                dispatcher.notify()  # no worker takes anything
            await asyncio.wait_for(dispatcher.room(), 10)  # returns, after its bound

    asyncio.run(scenario())

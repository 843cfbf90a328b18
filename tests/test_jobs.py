"""procrastinate jobs on PostgreSQL: each queued execution has exactly one, committed with
it; the sweep rescues the jobs of dead workers (their executions `crashed`) and gives a
job to an execution that lost its own."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest
from procrastinate.job_context import JobContext
from procrastinate.jobs import Job
from sqlalchemy import text

from solder import executions, ids, keys, workers
from solder.app import Solder
from solder.ids import now_ms
from solder.store import jobs, queue
from solder.store.database import Database
from solder.store.jobs import CHANNEL, QUEUE, defer_params
from solder.store.prepared import Prepared, fetch_one
from solder.workers import QueueWorker
from tests import databases
from tests.conftest import TIMEOUT, Api, Server, api_client
from tests.test_events import on_event, send

pytestmark = pytest.mark.skipif(
    not databases.on_postgres(), reason="PostgreSQL only (SOLDER_TEST_DATABASE=postgres)"
)

WORKFLOW = {
    "name": "Double",
    "trigger": {"type": "webhook"},
    "blocks": [
        {
            "name": "double",
            "connector": "transform",
            "config": {"expression": "{{ trigger.n * 2 }}"},
        }
    ],
}


@pytest.fixture
def api_only(make_server: Callable[..., Server]) -> Server:
    """A server that queues runs and runs none (`solder serve --no-worker`); its
    backpressure never waits (no worker takes the runs it queues)."""
    return make_server(worker=False, worker_timeout_seconds=1, queue_high_water=1_000_000)


@pytest.fixture
def api(api_only: Server) -> Iterator[Api]:
    with api_client(api_only) as client:
        yield client


EVENTS = "SELECT type::text FROM procrastinate_events ORDER BY id"
# How many of the test database's sessions wait for a lock (one held by the test).
LOCK_WAITERS = (
    "SELECT count(*) FROM pg_stat_activity"
    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
)


def jobs_of(server: Server) -> list[tuple[Any, ...]]:
    return databases.rows(
        server.settings.data_dir,
        "SELECT id, status, args->>'execution_id', lock FROM procrastinate_jobs ORDER BY id",
    )


def a_registered_worker(data_dir: Path) -> int:
    """A worker's row, as procrastinate registers one (its heartbeat now): its id."""
    [(worker_id,)] = databases.rows(
        data_dir, "INSERT INTO procrastinate_workers DEFAULT VALUES RETURNING id"
    )
    return int(str(worker_id))


def executions_of(data_dir: Path) -> dict[str, tuple[Any, Any]]:
    """Each execution's status and lease, by id."""
    found = databases.rows(data_dir, "SELECT id, status, lease FROM executions")
    return {str(id_): (status, lease) for id_, status, lease in found}


def count_fetches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many jobs each of the job managers' fetch statements finds from now on."""
    fetches: list[int] = []
    fetch_and_take = queue.fetch_and_take

    async def counted(*args: Any) -> Any:
        fetched = await fetch_and_take(*args)
        fetches.append(len(fetched))
        return fetched

    monkeypatch.setattr(queue, "fetch_and_take", counted)
    return fetches


@contextlib.asynccontextmanager
async def a_worker(server: Server, *, slots: int) -> AsyncIterator[tuple[workers._JobManager, int]]:
    """A worker's job manager of `slots` slots on the server's database, registered (as
    procrastinate's worker does when it starts): it, and its worker id."""
    solder = Solder(server.settings)
    assert isinstance(solder.dispatcher, QueueWorker)
    manager = solder.dispatcher.jobs
    manager.concurrency = slots
    try:
        async with solder.dispatcher.app.open_async():
            yield manager, await manager.register_worker()
    finally:
        await solder.db.dispose()


def sweep(server: Server) -> int:
    return sweep_from(server, "")[0]


def sweep_from(server: Server, walked: str) -> tuple[int, str]:
    """One crash sweep of a new worker whose walk for deleted jobs stands at `walked`:
    how many it rescued, and where its walk stands after."""

    async def run() -> tuple[int, str]:
        solder = Solder(server.settings)
        assert isinstance(solder.dispatcher, QueueWorker)
        solder.dispatcher._walked = walked
        try:
            return await solder.dispatcher.sweep(), solder.dispatcher._walked
        finally:
            assert solder.waker is not None
            await solder.waker.stop()
            await solder.db.dispose()

    return asyncio.run(run())


def test_an_accepted_run_has_its_job_before_any_worker_runs(api_only: Server, api: Api) -> None:
    user_id, workflow_id = api.install(WORKFLOW)
    execution_id = api.run(user_id, workflow_id, {"n": 1})
    [(job_id, status, job_execution, lock)] = jobs_of(api_only)
    assert (status, job_execution) == ("todo", execution_id)
    assert lock.endswith(execution_id), "one job at a time per execution"
    linked = databases.rows(
        api_only.settings.data_dir, f"SELECT job_id FROM executions WHERE id = '{execution_id}'"
    )
    assert linked == [(job_id,)]


def queue_by_hand(
    server: Server,
    execution_id: str,
    workflow_id: str,
    user_id: str,
    *,
    then: Callable[[], None] | None = None,
) -> None:
    """Queue an execution as the API's accept does, in a transaction of its own (`then`
    runs in it, before the commit), without the API: nothing wakes the workers. The
    server has run the workflow once already (its tenant and version are read from it)."""
    [(tenant_id, version)] = databases.rows(
        server.settings.data_dir, "SELECT tenant_id, workflow_version FROM executions LIMIT 1"
    )

    async def run() -> None:
        db = Database(server.settings.database_url)
        try:
            async with db.write() as conn:
                await queue.insert_execution(
                    conn,
                    tenant_id=str(tenant_id),
                    id=execution_id,
                    workflow_id=workflow_id,
                    user_id=user_id,
                    workflow_version=int(str(version)),
                    status="queued",
                    trigger_id="trigger",
                    trigger_data="{}",
                    started_at=now_ms(),
                )
                if then is not None:
                    then()
        finally:
            await db.dispose()

    asyncio.run(run())


def wait_until_a_worker_listens(data_dir: Path, workers: int = 1) -> None:
    """Return once `workers` workers' listeners have run their LISTEN (a wake sent before
    would reach none, or fewer)."""
    deadline = time.monotonic() + TIMEOUT
    while databases.rows(
        data_dir,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        f" AND query LIKE 'LISTEN \"{CHANNEL}\"%'",
    ) < [(workers,)]:
        assert time.monotonic() < deadline, f"fewer than {workers} workers listened"
        time.sleep(0.05)


def listening(data_dir: Path) -> psycopg.Connection[Any]:
    """A connection listening where procrastinate's workers do."""
    conn = psycopg.connect(databases.database_url(data_dir), autocommit=True)
    conn.execute(f'LISTEN "{CHANNEL}"')
    return conn


def wakes(conn: psycopg.Connection[Any], seconds: float) -> list[dict[str, Any]]:
    """The wake received within `seconds`, if any, its turn (a number) taken out."""
    found = [orjson.loads(n.payload) for n in conn.notifies(timeout=seconds, stop_after=1)]
    for wake in found:
        assert isinstance(wake.pop("turn"), int), "a wake names whose turn it is to fetch"
    return found


def test_runs_are_announced_after_their_commit_not_from_inside_it(
    api_only: Server, api: Api
) -> None:
    """A NOTIFY from inside the accept's transaction would hold PostgreSQL's notification
    lock through its commit's flush, so that every accept commits after the one before
    (migration 0012). The job is deferred without one; the process that accepted the run
    sends its own, after the commit."""
    user_id, workflow_id = api.install(WORKFLOW)
    api.run(user_id, workflow_id, {"n": 1})
    with listening(api_only.settings.data_dir) as listener:
        queue_by_hand(api_only, "queued-by-hand", workflow_id, user_id)
        assert len(jobs_of(api_only)) == 2
        assert wakes(listener, 0.5) == [], "the job's insert notifies nobody"

        api.run(user_id, workflow_id, {"n": 2})
        assert wakes(listener, TIMEOUT) == [{"type": "job_inserted"}]


def test_a_waiting_worker_runs_a_run_accepted_elsewhere_at_once(
    make_server: Callable[..., Server],
    api_only: Server,
    api: Api,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker with nothing to do waits for a wake, not for its next poll (made an hour
    here): a run accepted by another process is run at once."""
    monkeypatch.setattr(workers, "_POLL_SECONDS", 3600.0)
    data_dir = api_only.settings.data_dir
    make_server(data_dir=data_dir)
    wait_until_a_worker_listens(data_dir)
    user_id, workflow_id = api.install(WORKFLOW)
    for n in range(3):
        execution_id = api.run(user_id, workflow_id, {"n": n})
        assert api.wait_for(workflow_id, execution_id)["status"] == "succeeded"


def test_a_wake_that_comes_while_a_fetch_finds_nothing_is_not_lost(
    api_only: Server, api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """procrastinate's worker forgets a wake that came while it fetched. If that fetch
    began before the announced run was committed and found nothing, the run would wait
    for the worker's next poll (a second) with the worker idle: the job manager fetches
    again. The race is arranged: the run is accepted, and its wake received by the
    worker's listener, while the first fetch (which found nothing) is still running."""
    user_id, workflow_id = api.install(WORKFLOW)
    fetch_and_take = queue.fetch_and_take
    accepted: list[str] = []

    async def run() -> Job | None:
        solder = Solder(api_only.settings)
        assert isinstance(solder.dispatcher, QueueWorker)
        manager = solder.dispatcher.jobs

        async def racing(conn: Any, *args: Any) -> Any:
            fetched = await fetch_and_take(conn, *args)
            if not fetched and not accepted:
                wakes = manager.wakes
                accepted.append(await asyncio.to_thread(api.run, user_id, workflow_id, {"n": 1}))
                deadline = time.monotonic() + TIMEOUT
                while manager.wakes == wakes:
                    assert time.monotonic() < deadline, "the wake never came"
                    await asyncio.sleep(0.01)
            return fetched

        async def woken(*, channel: str, notification: Any) -> None:
            pass

        monkeypatch.setattr(queue, "fetch_and_take", racing)
        worker_id = a_registered_worker(api_only.settings.data_dir)
        try:
            async with solder.dispatcher.app.open_async():
                listener = asyncio.create_task(
                    manager.listen_for_jobs(on_notification=woken, queues=[QUEUE])
                )
                try:
                    await asyncio.to_thread(wait_until_a_worker_listens, api_only.settings.data_dir)
                    return await manager.fetch_job([QUEUE], worker_id)
                finally:
                    listener.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await listener
        finally:
            await solder.db.dispose()

    job = asyncio.run(run())
    assert job is not None, "the run announced during the fetch is fetched"
    assert job.task_kwargs["execution_id"] == accepted[0]


def test_a_wake_is_fetched_at_once_by_the_worker_whose_turn_it_names(
    api_only: Server,
) -> None:
    """procrastinate wakes every worker on a NOTIFY, and every one fetched: with N workers,
    N - 1 fetches for nothing a run. A wake names a turn among the live workers: that one
    is woken at once; another, later, once for all the wakes meanwhile (for what the first
    could not take), unless half its slots are taken already. A wake naming no turn
    (procrastinate's own) wakes every one at once."""
    woken: dict[str, list[float]] = {"first": [], "second": []}

    async def counts_reach(first: int, second: int) -> list[int]:
        """The wakes each worker acted on, once they reach these counts (or the test's
        timeout), and a moment more for any beyond them."""
        deadline = time.monotonic() + TIMEOUT
        while len(woken["first"]) < first or len(woken["second"]) < second:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        return [len(times) for times in woken.values()]

    async def run() -> None:
        loop = asyncio.get_running_loop()
        listeners: list[asyncio.Task[None]] = []
        try:
            async with contextlib.AsyncExitStack() as stack:
                registered = [
                    await stack.enter_async_context(a_worker(api_only, slots=8)) for _ in woken
                ]
                managers = [manager for manager, _ in registered]
                first_id = registered[0][1]
                await managers[0].see_peers()  # it registered before the second
                peers = managers[0].peers
                assert len(peers) == 2
                assert managers[1].peers == peers
                first_turn = peers.index(first_id)

                for name, manager in zip(woken, managers, strict=True):

                    async def record(*, channel: str, notification: Any, name: str = name) -> None:
                        woken[name].append(loop.time())

                    listeners.append(
                        asyncio.create_task(
                            manager.listen_for_jobs(on_notification=record, queues=[QUEUE])
                        )
                    )
                await asyncio.to_thread(wait_until_a_worker_listens, api_only.settings.data_dir, 2)

                sent = loop.time()
                async with managers[0].db.write() as conn:  # five wakes, one commit
                    for n in range(5):
                        await jobs.wake(conn, first_turn + 2 * n)
                assert await counts_reach(5, 1) == [5, 1], (
                    "the worker whose turn they name: each at once; the other: once for five"
                )
                assert woken["second"][0] - sent >= workers._OTHERS_WAKE_SECONDS

                for times in woken.values():
                    times.clear()
                managers[1].in_hand = managers[1].concurrency // 2  # half its slots taken
                async with managers[0].db.write() as conn:
                    for n in range(3):
                        await jobs.wake(conn, first_turn + 2 * n)
                assert await counts_reach(3, 3) == [3, 3], (
                    "a worker with half its slots taken fetches at once: the load is high"
                )
                managers[1].in_hand = 0

                for times in woken.values():
                    times.clear()
                async with managers[0].db.write() as conn:
                    await conn.execute(
                        text('SELECT pg_notify(:channel, \'{"type": "job_inserted"}\')'),
                        {"channel": CHANNEL},
                    )
                assert await counts_reach(1, 1) == [1, 1], "no turn named: every one at once"
        finally:
            for listener in listeners:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener

    asyncio.run(run())


def test_runs_whose_turn_names_a_silent_worker_are_run_by_another(
    make_server: Callable[..., Server],
    api_only: Server,
    api: Api,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker presumed alive (its heartbeat fresh) that takes no job, as one that has
    just died: the wakes whose turn names it are taken by another worker a moment later,
    not at its poll (an hour here)."""
    monkeypatch.setattr(workers, "_POLL_SECONDS", 3600.0)
    data_dir = api_only.settings.data_dir
    a_registered_worker(data_dir)
    make_server(data_dir=data_dir, worker_timeout_seconds=600)
    wait_until_a_worker_listens(data_dir)
    user_id, workflow_id = api.install(WORKFLOW)
    for n in range(4):  # one wake a run, each naming the next turn: two name the silent one
        execution_id = api.run(user_id, workflow_id, {"n": n})
        assert api.wait_for(workflow_id, execution_id)["status"] == "succeeded"


def test_a_worker_that_found_the_queue_empty_does_not_ask_again_at_once(
    api_only: Server, api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """procrastinate asks for jobs until a fetch finds none: each wake cost a worker a
    fetch for nothing after the ones that found its runs. A batch that came back short
    found the queue empty, so the asks for half a poll's interval after it are answered
    without a statement; one after that (procrastinate's poll) fetches again, as does
    one after a wake."""
    monkeypatch.setattr(workers, "_POLL_SECONDS", 0.4)
    user_id, workflow_id = api.install(WORKFLOW)
    started = api.run(user_id, workflow_id, {"n": 1})
    fetches = count_fetches(monkeypatch)

    async def run() -> None:
        async with a_worker(api_only, slots=3) as (manager, worker_id):
            job = await manager.fetch_job([QUEUE], worker_id)
            assert job is not None
            assert job.task_kwargs["execution_id"] == started
            assert fetches == [1], "three asked for, one found: the queue is empty"
            assert await manager.fetch_job([QUEUE], worker_id) is None
            assert await manager.fetch_job([QUEUE], worker_id) is None
            assert fetches == [1], "not asked again"
            await asyncio.sleep(0.2)  # half the poll's interval
            assert await manager.fetch_job([QUEUE], worker_id) is None
            assert fetches == [1, 0], "the poll's ask is a fetch"

            await asyncio.to_thread(api.run, user_id, workflow_id, {"n": 2})
            manager.wakes += 1  # as its listener counts the wake that run sent
            assert await manager.fetch_job([QUEUE], worker_id) is not None
            assert fetches == [1, 0, 1]
            manager.wakes += 1  # a wake came since that fetch
            assert await manager.fetch_job([QUEUE], worker_id) is None
            assert fetches == [1, 0, 1, 0], "a wake since the fetch: fetched again"

    asyncio.run(run())


def test_a_runs_job_is_locked_by_its_execution_however_it_was_accepted(
    api_only: Server, api: Api
) -> None:
    """The accept spells the job's lock and arguments in SQL (by ids, its tenant is read
    from the API key in the same statement); they are the ones `jobs.defer_params` gives,
    which the crash sweep and the delays defer with: procrastinate runs one job of an
    execution at a time."""
    user_id, workflow_id = api.install(WORKFLOW)
    by_ids = api.run(user_id, workflow_id, {"n": 1})
    by_names = api.post(
        "/run/workflow", json={"userId": "ada", "workflowName": WORKFLOW["name"], "data": {}}
    )
    assert by_names.status_code == 200, by_names.text
    data_dir = api_only.settings.data_dir
    [(tenant_id,)] = databases.rows(data_dir, "SELECT DISTINCT tenant_id FROM executions")
    found = databases.rows(data_dir, "SELECT lock, args::text FROM procrastinate_jobs ORDER BY id")
    expected = []
    for execution_id in (by_ids, by_names.json()["executionId"]):
        params = defer_params(str(tenant_id), execution_id)
        expected.append((params["lock"], orjson.loads(params["args"])))
    assert [(lock, orjson.loads(str(args))) for lock, args in found] == expected


def test_an_execution_rolled_back_leaves_no_job(api_only: Server, api: Api) -> None:
    user_id, workflow_id = api.install(WORKFLOW)
    api.run(user_id, workflow_id, {"n": 1})

    def fail() -> None:
        assert len(jobs_of(api_only)) == 1, "uncommitted: not seen by workers"
        raise RuntimeError("the request fails after queueing")

    with pytest.raises(RuntimeError):
        queue_by_hand(api_only, "rolled-back-execution", workflow_id, user_id, then=fail)
    assert len(jobs_of(api_only)) == 1, "the job went with its execution"
    assert len(databases.rows(api_only.settings.data_dir, "SELECT id FROM executions")) == 1


def taken_by_a_dead_worker(data_dir: Path) -> None:
    """Every job fetched by a worker that then died (no heartbeat for an hour), and its
    execution claimed."""
    databases.execute(
        data_dir,
        "WITH dead AS (INSERT INTO procrastinate_workers (last_heartbeat)"
        " VALUES (NOW() - INTERVAL '1 hour') RETURNING id)"
        " UPDATE procrastinate_jobs SET status = 'doing', worker_id = (SELECT id FROM dead)",
    )
    databases.execute(data_dir, "UPDATE executions SET status = 'running', lease = 'dead'")


def test_a_dead_workers_execution_is_marked_crashed_then_resumed(
    make_server: Callable[..., Server], api_only: Server, api: Api
) -> None:
    user_id, workflow_id = api.install(WORKFLOW)
    execution_id = api.run(user_id, workflow_id, {"n": 21})
    data_dir = api_only.settings.data_dir
    taken_by_a_dead_worker(data_dir)
    with listening(data_dir) as listener:
        assert sweep(api_only) == 1
        assert wakes(listener, TIMEOUT) == [{"type": "job_inserted"}], "the workers woken"
    [log] = api.logs(workflow_id)
    assert log["status"] == "crashed"
    assert [status for _, status, _, _ in jobs_of(api_only)] == ["todo"]
    assert sweep(api_only) == 0, "rescued once"

    worker = make_server(data_dir=data_dir)
    with api_client(worker) as resumed:
        log = resumed.wait_for(workflow_id, execution_id)
    assert log["status"] == "succeeded"
    assert log["results"][1]["data"][0][0]["json"] == 42


def test_job_events_record_what_the_execution_does_not(
    make_server: Callable[..., Server], api_only: Server, api: Api
) -> None:
    """A job deferred and started leaves no procrastinate event (the execution's row says
    when it was accepted and claimed: migration 0011); its retry does, until it is done."""
    user_id, workflow_id = api.install(WORKFLOW)
    execution_id = api.run(user_id, workflow_id, {"n": 3})
    data_dir = api_only.settings.data_dir

    def events() -> list[str]:
        return [str(kind) for (kind,) in databases.rows(data_dir, EVENTS)]

    assert events() == [], "deferred"
    taken_by_a_dead_worker(data_dir)
    assert events() == [], "started"
    assert sweep(api_only) == 1
    assert events() == ["scheduled", "deferred_for_retry"], "retried at once"

    worker = make_server(data_dir=data_dir)
    with api_client(worker) as resumed:
        assert resumed.wait_for(workflow_id, execution_id)["status"] == "succeeded"
    assert jobs_of(api_only) == []
    assert events() == [], "deleted with the job"


def test_a_run_ended_takes_its_job_with_it(
    make_server: Callable[..., Server], caplog: pytest.LogCaptureFixture
) -> None:
    """The execution's end deletes the job that ran it, in the same statement: no job is
    left behind, and procrastinate, with nothing left to finish, has nothing to say."""
    caplog.set_level(logging.WARNING)
    server = make_server()
    with api_client(server) as api:
        user_id, workflow_id = api.install(WORKFLOW)
        started = [api.run(user_id, workflow_id, {"n": n}) for n in range(5)]
        ended = [api.wait_for(workflow_id, execution_id) for execution_id in started]
    assert [log["status"] for log in ended] == ["succeeded"] * 5
    assert jobs_of(server) == []
    said = [
        record.getMessage()
        for record in caplog.records
        if record.levelno >= logging.ERROR
        or record.name.startswith(("procrastinate", "solder.worker"))
    ]
    assert said == [], "a job finished twice, or a worker restarted"


def test_procrastinates_records_of_a_job_carry_its_extras_when_logged(
    make_server: Callable[..., Server], caplog: pytest.LogCaptureFixture
) -> None:
    """Solder's worker builds procrastinate's log extras only for a record made: with
    procrastinate's logger at INFO, a job's records still carry the job and the worker."""
    caplog.set_level(logging.INFO, logger="procrastinate")
    server = make_server()
    with api_client(server) as api:
        user_id, workflow_id = api.install(WORKFLOW)
        execution_id = api.run(user_id, workflow_id, {"n": 1})
        assert api.wait_for(workflow_id, execution_id)["status"] == "succeeded"
    records = {
        record.__dict__["action"]: record.__dict__
        for record in caplog.records
        if record.name.startswith("procrastinate.worker") and "action" in record.__dict__
    }
    started, ended = records["start_job"], records["job_success"]
    for extras in (started, ended):
        assert extras["job"]["task_kwargs"]["execution_id"] == execution_id
        assert extras["job"]["call_string"].startswith(f"{jobs.TASK}[")
        assert extras["worker"]["queues"] == [QUEUE]
        assert extras["worker"]["job_id"] == extras["job"]["id"]
    assert ended["end_timestamp"] >= ended["start_timestamp"]


def test_a_worker_fetches_a_job_for_each_free_slot_at_once(
    make_server: Callable[..., Server],
    api_only: Server,
    api: Api,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """procrastinate asks for one job a free slot, one fetch after the other; with a
    backlog, the first fetch takes a job for each free slot, its execution claimed, and
    the others are handed out without a fetch of their own. A worker that stops puts the
    jobs it fetched and did not start back in the queue, and they run."""
    user_id, workflow_id = api.install(WORKFLOW)
    started = [api.run(user_id, workflow_id, {"n": n}) for n in range(5)]
    data_dir = api_only.settings.data_dir
    fetches = count_fetches(monkeypatch)

    def statuses() -> list[Any]:
        found = executions_of(data_dir)
        return [found[execution_id][0] for execution_id in started]

    async def run() -> None:
        async with a_worker(api_only, slots=3) as (manager, worker_id):
            first = await manager.fetch_job([QUEUE], worker_id)
            assert fetches == [3], "one fetch, a job for each of the three free slots"
            assert statuses() == ["running"] * 3 + ["queued"] * 2
            second = await manager.fetch_job([QUEUE], worker_id)
            assert fetches == [3], "handed out without a fetch"
            handed = [first, second]
            assert [job.task_kwargs["execution_id"] for job in handed if job] == started[:2]
            for job in handed:  # stopped before they ran: procrastinate retries them
                assert job is not None
                await manager.retry_job(job)
            await manager.unregister_worker(worker_id)

    asyncio.run(run())
    assert [status for _, status, _, _ in jobs_of(api_only)] == ["todo"] * 5
    make_server(data_dir=data_dir, worker_timeout_seconds=1)
    ended = [api.wait_for(workflow_id, execution_id) for execution_id in started]
    assert [log["status"] for log in ended] == ["succeeded"] * 5
    assert [log["results"][1]["data"][0][0]["json"] for log in ended] == [0, 2, 4, 6, 8]


def test_a_jobs_fetch_claims_its_execution(api_only: Server, api: Api) -> None:
    """One statement fetches the job and claims its execution. A claim that finds nothing
    is made again when the job runs: the execution may have been committed after the
    fetch's statement began (procrastinate's fetch function reads in a newer snapshot
    than the statement's), which this test stands in for by hiding the execution."""
    user_id, workflow_id = api.install(WORKFLOW)
    first = api.run(user_id, workflow_id, {"n": 1})
    second = api.run(user_id, workflow_id, {"n": 2})
    data_dir = api_only.settings.data_dir

    async def run() -> None:
        solder = Solder(api_only.settings)
        assert isinstance(solder.dispatcher, QueueWorker)
        manager = solder.dispatcher.jobs
        manager.concurrency = 1  # one slot: one job a fetch
        worker_id = a_registered_worker(data_dir)
        try:
            job = await manager.fetch_job([QUEUE], worker_id)
            assert job is not None
            assert job.task_kwargs["execution_id"] == first
            lease, taken = manager.taken[job.id or 0]
            assert taken is not None
            assert executions_of(data_dir) == {first: ("running", lease), second: ("queued", None)}

            databases.execute(data_dir, f"UPDATE executions SET id = 'x' WHERE id = '{second}'")
            hidden = await manager.fetch_job([QUEUE], worker_id)
            assert hidden is not None
            assert hidden.task_kwargs["execution_id"] == second
            assert hidden.id not in manager.taken, "nothing claimed"
            databases.execute(data_dir, f"UPDATE executions SET id = '{second}' WHERE id = 'x'")

            for fetched in (job, hidden):
                context = JobContext(
                    app=solder.dispatcher.app,
                    job=fetched,
                    start_timestamp=time.time(),
                    abort_reason=lambda: None,
                )
                kwargs = fetched.task_kwargs
                await solder.dispatcher.run_job(
                    context, str(kwargs["tenant_id"]), str(kwargs["execution_id"])
                )
            assert manager.taken == {}
        finally:
            await solder.db.dispose()

    asyncio.run(run())
    assert [api.wait_for(workflow_id, id_)["status"] for id_ in (first, second)] == [
        "succeeded",
        "succeeded",
    ]


def test_only_a_fetch_commits_without_waiting_for_its_wal_flush(api_only: Server, api: Api) -> None:
    """A job's fetch (its claim of the execution included) commits without waiting for
    PostgreSQL's WAL flush: lost in a crash of the database, it is lost whole, and any
    durable write of the run after it (a step kept, the end) flushes it first. The
    setting is the fetch's transaction's own: the connection's next transaction, such as
    a run's end or an accept, waits for its flush again."""
    user_id, workflow_id = api.install(WORKFLOW)
    execution_id = api.run(user_id, workflow_id, {"n": 1})
    data_dir = api_only.settings.data_dir
    worker_id = a_registered_worker(data_dir)
    setting = Prepared(text("SELECT current_setting('synchronous_commit') AS value"))

    async def fetch_then_look() -> tuple[list[Any], Any, Any]:
        db = Database(api_only.settings.database_url, pool_size=1)  # one connection
        try:
            async with db.write_inline() as conn:  # BEGIN, the fetch, then a look
                fetched = await queue.fetch_and_take(conn, [QUEUE], worker_id, "lease-1", now_ms())
                during = await fetch_one(conn, setting)
            async with db.write_inline() as conn:
                after = await fetch_one(conn, setting)
            assert during is not None
            assert after is not None
            return fetched, during["value"], after["value"]
        finally:
            await db.dispose()

    fetched, during, after = asyncio.run(fetch_then_look())
    assert [job["args"]["execution_id"] for job, _ in fetched] == [execution_id]
    assert executions_of(data_dir) == {execution_id: ("running", "lease-1")}
    assert (during, after) == ("off", "on")


def test_an_end_not_written_leaves_the_job_to_procrastinate(api_only: Server, api: Api) -> None:
    """A worker that lost its execution (presumed dead, its lease ended) writes no end, and
    so deletes no job: the job's own worker still finishes it."""
    user_id, workflow_id = api.install(WORKFLOW)
    execution_id = api.run(user_id, workflow_id, {"n": 1})
    data_dir = api_only.settings.data_dir
    databases.execute(data_dir, "UPDATE procrastinate_jobs SET status = 'doing'")
    databases.execute(data_dir, "UPDATE executions SET status = 'running', lease = 'mine'")
    [(job_id, _, _, _)] = jobs_of(api_only)
    [(tenant_id,)] = databases.rows(data_dir, "SELECT tenant_id FROM executions")

    async def end(lease: str) -> queue.Ended:
        db = Database(api_only.settings.database_url)
        try:
            async with db.write() as conn:
                return await queue.end(
                    conn,
                    str(tenant_id),
                    execution_id,
                    lease,
                    status="succeeded",
                    stopped_at=now_ms(),
                    error_block=None,
                    error_message=None,
                    app_actions=0,
                    log=b"",
                    job=int(str(job_id)),
                )
        finally:
            await db.dispose()

    assert asyncio.run(end("theirs")) == queue.Ended(False, None)
    assert [status for _, status, _, _ in jobs_of(api_only)] == ["doing"]
    assert asyncio.run(end("mine")) == queue.Ended(True, job_id)
    assert jobs_of(api_only) == []


def test_an_execution_that_lost_its_job_gets_a_new_one(
    make_server: Callable[..., Server], api_only: Server, api: Api
) -> None:
    user_id, workflow_id = api.install(WORKFLOW)
    execution_id = api.run(user_id, workflow_id, {"n": 2})
    data_dir = api_only.settings.data_dir
    databases.execute(data_dir, "DELETE FROM procrastinate_jobs")
    assert sweep(api_only) == 0, "not before it has been idle for the worker timeout"
    time.sleep(1.1)
    with listening(data_dir) as listener:
        assert sweep(api_only) == 1
        assert wakes(listener, TIMEOUT) == [{"type": "job_inserted"}], "the workers woken"
    [(_, status, job_execution, _)] = jobs_of(api_only)
    assert (status, job_execution) == ("todo", execution_id)

    worker = make_server(data_dir=data_dir)
    with api_client(worker) as resumed:
        log = resumed.wait_for(workflow_id, execution_id)
    assert log["status"] == "succeeded"


def test_an_execution_whose_job_procrastinate_ended_gets_a_new_one(
    api_only: Server, api: Api
) -> None:
    """Found from the jobs' side at the first sweep once idle, wherever the walk for
    deleted jobs stands."""
    user_id, workflow_id = api.install(WORKFLOW)
    kept, lost = (api.run(user_id, workflow_id, {"n": n}) for n in (1, 2))
    data_dir = api_only.settings.data_dir
    databases.execute(
        data_dir,
        f"UPDATE procrastinate_jobs SET status = 'failed' WHERE args->>'execution_id' = '{lost}'",
    )
    time.sleep(1.1)
    # The walk is past both.
    assert sweep_from(api_only, max(kept, lost)) == (1, ""), (
        "rescued; the walk found the table's end"
    )
    assert sorted((job_execution, status) for _, status, job_execution, _ in jobs_of(api_only)) == [
        (kept, "todo"),
        (lost, "failed"),
        (lost, "todo"),
    ]
    assert sweep(api_only) == 0, "once"


def test_the_walk_for_deleted_jobs_finds_them_stretch_by_stretch(
    api_only: Server, api: Api
) -> None:
    user_id, workflow_id = api.install(WORKFLOW)
    ids = sorted(api.run(user_id, workflow_id, {"n": n}) for n in range(5))
    data_dir = api_only.settings.data_dir
    databases.execute(
        data_dir, f"DELETE FROM procrastinate_jobs WHERE args->>'execution_id' = '{ids[3]}'"
    )
    [(tenant_id,)] = databases.rows(data_dir, "SELECT DISTINCT tenant_id FROM executions")

    async def walk(idle_since: int) -> list[tuple[str | None, list[str]]]:
        db = Database(api_only.settings.database_url)
        stretches: list[tuple[str | None, list[str]]] = []
        walked = ""
        try:
            async with db.read() as conn:
                while True:
                    last, lost = await jobs.walk(conn, walked, 2, idle_since)
                    assert all(tenant == tenant_id for tenant, _ in lost)
                    stretches.append((last, [execution for _, execution in lost]))
                    if last is None:
                        return stretches
                    walked = last
        finally:
            await db.dispose()

    assert asyncio.run(walk(now_ms() + 1000)) == [
        (ids[1], []),
        (ids[3], [ids[3]]),
        (ids[4], []),
        (None, []),
    ]
    assert asyncio.run(walk(0)) == [(ids[1], []), (ids[3], []), (ids[4], []), (None, [])], (
        "not while it may still be being queued"
    )


def test_a_run_updates_its_execution_in_place(api_only: Server, api: Api) -> None:
    """Heap-only (HOT) updates: no index of the executions table has a column that a run's
    claim or end changes, so neither writes an index entry (migration 0013)."""
    user_id, workflow_id = api.install(WORKFLOW)
    execution_id = api.run(user_id, workflow_id, {"n": 1})
    [(tenant_id,)] = databases.rows(api_only.settings.data_dir, "SELECT tenant_id FROM executions")

    async def run() -> tuple[int, int]:
        db = Database(api_only.settings.database_url)
        try:
            async with db.write() as conn:
                taken = await queue.take(conn, str(tenant_id), execution_id, "lease", now_ms())
                assert taken is not None
                ended = await queue.end(
                    conn,
                    str(tenant_id),
                    execution_id,
                    "lease",
                    status="succeeded",
                    stopped_at=now_ms(),
                    error_block=None,
                    error_message=None,
                    app_actions=0,
                    log=b"{}" * 200,
                )
                assert ended.written
                found = await conn.execute(
                    text(
                        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables"
                        " WHERE relname = 'executions'"
                    )
                )
                updates, in_place = found.one()
                return int(updates), int(in_place)
        finally:
            await db.dispose()

    assert asyncio.run(run()) == (2, 2)


def fetch_plans(server: Server, calls: int = 1) -> list[str]:
    """The plans procrastinate's own job fetch (`procrastinate_fetch_job_v2`) runs with
    on this database now, at each of `calls` calls in one session, as auto_explain logs
    them; the jobs they take are put back."""
    import psycopg

    plans: list[str] = []
    with psycopg.connect(databases.database_url(server.settings.data_dir)) as conn:
        conn.add_notice_handler(lambda notice: plans.append(notice.message_primary or ""))
        for setting in (
            "LOAD 'auto_explain'",
            "SET auto_explain.log_min_duration = 0",
            "SET auto_explain.log_nested_statements = on",
            "SET auto_explain.log_level = notice",
        ):
            conn.execute(setting)
        for _ in range(calls):
            conn.execute("SELECT procrastinate_fetch_job_v2(ARRAY['executions'], NULL)")
        conn.rollback()
    return [plan for plan in plans if "FOR UPDATE OF jobs SKIP LOCKED" in plan]


def fetch_plan(server: Server) -> str:
    """The plan of the fetch's first call in a session (`fetch_plans`)."""
    [plan] = fetch_plans(server)
    return plan


def test_the_fetch_runs_one_plan_made_for_any_call(api_only: Server, api: Api) -> None:
    """PL/pgSQL caches the fetch's plan in each session, and by default chooses at every
    call between that generic plan and one made for the call's arguments, by their
    estimated costs. Under load, as ANALYZE changed the queue's statistics, the choice
    turned to planning anew at a quarter or more of the calls, each plan costing three
    times the query it planned (bench/RESULTS.md). Migration 0014: the fetch runs its
    generic plan at every call, the first ones too. (A plan made for one call names the
    queues it was called with; the generic plan names the function's parameter.)"""
    user_id, workflow_id = api.install(WORKFLOW)
    for n in range(8):
        api.run(user_id, workflow_id, {"n": n})

    plans = fetch_plans(api_only, calls=8)

    assert len(plans) == 8
    for plan in plans:
        body = plan.split("RETURNING procrastinate_jobs.*", 1)[1]
        assert "{executions}" not in body, plan
        assert "ANY (($1)" in body, plan


@pytest.mark.parametrize("vacuumed", [False, True], ids=["dead rows", "vacuumed empty"])
def test_a_backlog_met_with_stale_statistics_is_fetched_through_indexes(
    api_only: Server, api: Api, vacuumed: bool
) -> None:
    """A burst after a quiet time: the planner's statistics say the queue is short (20
    jobs on a table of dead rows) or empty (vacuumed after a drain). procrastinate's
    fetch, planned from them, checked each job's lock by scanning the whole table, or
    procrastinate's `(id, lock)` index, or a bitmap of all the jobs: a backlog made each
    fetch slower, so the workers fell further behind until the next ANALYZE
    (bench/RESULTS.md, scenario 2). Since migrations 0006 and 0010 it has one plan: the
    waiting jobs in order through the priority index, each lock looked up by index."""
    import psycopg

    user_id, workflow_id = api.install(WORKFLOW)
    for n in range(320):
        api.run(user_id, workflow_id, {"n": n})
    url = databases.database_url(api_only.settings.data_dir)
    with psycopg.connect(url, autocommit=True) as conn:
        # Workers take and finish jobs (their rows are dead, not yet vacuumed) until
        # ANALYZE comes by.
        for _ in range(320 if vacuumed else 300):
            conn.execute(
                "SELECT procrastinate_finish_job_v1("
                "(procrastinate_fetch_job_v2(ARRAY['executions'], NULL)).id, 'succeeded', true)"
            )
        conn.execute(("VACUUM " if vacuumed else "") + "ANALYZE procrastinate_jobs")
    for n in range(300):  # then a burst
        api.run(user_id, workflow_id, {"n": n})

    plan = fetch_plan(api_only)

    nodes = [
        re.sub(r" on \w+( \w+)?$", "", line.split("(cost=")[0].strip(" ->"))
        for line in plan.splitlines()
        if "(cost=" in line
    ]
    assert nodes == [
        "Update",
        "Limit",
        "LockRows",
        "Nested Loop Anti Join",
        "Index Scan using procrastinate_jobs_priority_idx_v1",
        "Index Scan using solder_procrastinate_jobs_lock_idx",
        "Nested Loop",
        "CTE Scan",
        "Index Scan using procrastinate_jobs_pkey",
    ], plan


def test_accepting_waits_while_the_queue_is_at_its_high_water_mark(
    make_server: Callable[..., Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Backpressure: with as many runs waiting as `SOLDER_QUEUE_HIGH_WATER`, accepting
    waits until a worker takes one; and with no worker at all, a run is still accepted
    once the wait is up (workers that are down do not stop the API)."""
    server = make_server(worker=False, queue_high_water=2)
    with api_client(server) as api:
        user_id, workflow_id = api.install(WORKFLOW)
        first, second = (api.run(user_id, workflow_id, {"n": n}) for n in (1, 2))
        third = api.run(user_id, workflow_id, {"n": 3})  # after the longest wait: queued
        assert [row[2] for row in jobs_of(server)] == [first, second, third]

    monkeypatch.setattr(workers, "_MAX_WAIT_SECONDS", 60.0)

    async def wait_for_room() -> None:
        db = Database(server.settings.database_url)
        try:
            backlog = workers.Backlog(db, high_water=3)
            waiting = asyncio.create_task(backlog.room())
            await asyncio.sleep(0.5)
            assert not waiting.done(), "three runs wait: no room for a fourth"
            # A worker takes one of them.
            databases.execute(
                server.settings.data_dir,
                "UPDATE procrastinate_jobs SET status = 'doing'"
                " WHERE id = (SELECT min(id) FROM procrastinate_jobs)",
            )
            await asyncio.wait_for(waiting, timeout=10)
            # Runs parked until later (a `delay` block) wait for no worker: not counted.
            databases.execute(
                server.settings.data_dir,
                "UPDATE procrastinate_jobs SET scheduled_at = now() + interval '1 hour'"
                " WHERE status = 'todo'",
            )
            await asyncio.wait_for(workers.Backlog(db, high_water=1).room(), timeout=10)
        finally:
            await db.dispose()

    asyncio.run(wait_for_room())


def test_runs_accepted_together_each_get_their_positions_and_their_job(
    api_only: Server, api: Api
) -> None:
    """Run requests that reach the API together are queued a loop turn at a time in one
    statement (`executions.KeyedAccepts`): each still gets the next positions of its
    workflow's and its user's logs, in order, start times that follow them, and its own
    job; a request whose target is not found among them is answered as alone."""
    ada, first = api.install(WORKFLOW)
    bob = api.create_user("bob")
    api.activate(bob, first)
    second = api.create_workflow({**WORKFLOW, "name": "Triple"})
    api.activate(ada, second)
    pairs = [(ada, first), (bob, first), (ada, second)] * 12

    async def post_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=api_only.base_url, headers=dict(api.headers), timeout=TIMEOUT
        ) as client:
            bodies = [
                {"userId": u, "workflowId": w, "data": {"n": n}} for n, (u, w) in enumerate(pairs)
            ]
            bodies.insert(7, {"userId": ada, "workflowId": "no-such-workflow", "data": {}})
            return await asyncio.gather(*(client.post("/run/workflow", json=b) for b in bodies))

    answers = asyncio.run(post_all())
    missing = answers.pop(7)
    assert missing.status_code == 404, missing.text
    assert [a.status_code for a in answers] == [200] * len(pairs), [a.text for a in answers]
    accepted = {a.json()["executionId"]: pair for a, pair in zip(answers, pairs, strict=True)}

    data_dir = api_only.settings.data_dir
    found = databases.rows(
        data_dir,
        "SELECT e.id, wn.workflow_id, un.user_id, e.workflow_position, e.user_position,"
        " e.started_at, e.trigger_data, j.args ->> 'execution_id'"
        " FROM executions AS e JOIN workflow_numbers AS wn ON wn.number = e.workflow_number"
        " JOIN user_numbers AS un ON un.number = e.user_number"
        " JOIN procrastinate_jobs AS j ON j.id = e.job_id ORDER BY e.workflow_position",
    )
    assert {str(row[0]): (row[2], row[1]) for row in found} == accepted
    assert all(row[7] == row[0] for row in found), "each execution's job is its own"
    for workflow in (first, second):
        rows = [row for row in found if row[1] == workflow]
        assert [row[3] for row in rows] == list(range(1, len(rows) + 1))
        starts = [int(str(row[5])) for row in rows]
        assert starts == sorted(starts), "start times follow positions"
        for user in (ada, bob):
            of_user = [int(str(row[4])) for row in rows if row[2] == user]
            assert sorted(of_user) == list(range(1, len(of_user) + 1))
    # Each request's own data, whichever statement carried it.
    for row in found:
        n = orjson.loads(str(row[6]))["n"]
        assert pairs[n] == (row[2], row[1])


def test_a_request_that_fails_a_batch_fails_alone(api_only: Server, api: Api) -> None:
    """A statement of several accepts that PostgreSQL refuses is retried a request at a
    time: the others are queued, the faulty one fails, nothing is half written."""
    user_id, workflow_id = api.install(WORKFLOW)
    key_hash = keys.hash_key(str(api.headers["Authorization"]).split()[-1])

    async def accept_together() -> tuple[
        list[executions.Queued | BaseException | None], list[queue.KeyedRun]
    ]:
        db = Database(api_only.settings.database_url)
        accepts = executions.KeyedAccepts(db)
        try:
            runs = [
                queue.KeyedRun(key_hash, workflow_id, user_id, ids.execution_id(), '{"n": 1}')
                for _ in range(4)
            ]
            # A NUL byte: PostgreSQL's text refuses it, and the whole statement with it.
            runs.insert(2, runs[0]._replace(id=ids.execution_id(), trigger_data='{"n": "\x00"}'))
            answers = await asyncio.gather(
                *(accepts.accept(run) for run in runs), return_exceptions=True
            )
            return list(answers), runs
        finally:
            await db.dispose()

    answers, runs = asyncio.run(accept_together())
    assert answers[:2] == ["queued", "queued"]
    assert answers[3:] == ["queued", "queued"]
    assert isinstance(answers[2], psycopg.DataError)
    queued = {
        str(row[0])
        for row in databases.rows(api_only.settings.data_dir, "SELECT id FROM executions")
    }
    assert queued == {run.id for i, run in enumerate(runs) if i != 2}
    assert len(jobs_of(api_only)) == 4, "no job without its execution"


def test_run_requests_that_come_while_a_statement_is_in_flight_go_together_next(
    api_only: Server, api: Api
) -> None:
    """While an accepting statement is in flight, the run requests that arrive, each in a
    loop turn of its own, wait for it and then go together in one statement: under load
    statements grow rather than multiply. The first here waits for its workflow's
    listing row, which another transaction holds; every run still gets the next
    positions, in the order it was requested."""
    user_id, workflow_id = api.install(WORKFLOW)
    api.run(user_id, workflow_id)  # the listing rows exist
    key_hash = keys.hash_key(str(api.headers["Authorization"]).split()[-1])
    url = databases.database_url(api_only.settings.data_dir)
    statements: list[int] = []

    class Counted(executions.KeyedAccepts):
        async def _queue(
            self, runs: list[queue.KeyedRun], here: queue.Here | None
        ) -> dict[str, queue.Taken | None]:
            statements.append(len(runs))
            return await super()._queue(runs, here)

    def run(n: int) -> queue.KeyedRun:
        return queue.KeyedRun(key_hash, workflow_id, user_id, ids.execution_id(), f'{{"n": {n}}}')

    async def accept_while_held() -> tuple[list[executions.Queued | None], list[queue.KeyedRun]]:
        db = Database(api_only.settings.database_url)
        accepts = Counted(db)
        runs = [run(n) for n in range(11)]
        try:
            async with (
                await psycopg.AsyncConnection.connect(url) as holder,
                await psycopg.AsyncConnection.connect(url, autocommit=True) as watcher,
            ):
                await holder.execute("SELECT 1 FROM log_listings WHERE user_number = 0 FOR UPDATE")
                first = asyncio.create_task(accepts.accept(runs[0]))
                deadline = time.monotonic() + TIMEOUT
                while await (await watcher.execute(LOCK_WAITERS)).fetchone() != (1,):
                    assert time.monotonic() < deadline, "the first statement never waited"
                    await asyncio.sleep(0.01)
                rest = []
                for later in runs[1:]:
                    rest.append(asyncio.create_task(accepts.accept(later)))
                    await asyncio.sleep(0)  # each request in a loop turn of its own
                await asyncio.sleep(0.05)
                assert statements == [1], "nothing more is sent while the first is in flight"
                await holder.rollback()
            return list(await asyncio.gather(first, *rest)), runs
        finally:
            await db.dispose()

    answers, runs = asyncio.run(accept_while_held())
    assert answers == ["queued"] * len(runs)
    assert statements == [1, len(runs) - 1]
    positions = databases.rows(
        api_only.settings.data_dir,
        "SELECT id, workflow_position, user_position FROM executions ORDER BY workflow_position",
    )
    assert [str(row[0]) for row in positions][1:] == [r.id for r in runs]
    assert [(row[1], row[2]) for row in positions] == [(n, n) for n in range(1, len(runs) + 2)]


def test_an_event_takes_its_workflows_listings_in_the_order_other_writers_do(
    api_only: Server, api: Api
) -> None:
    """An event that starts several workflows takes their logs listings' rows in the order
    of the workflows' numbers, as a loop turn's run requests and retention do: a writer
    that holds the first row and then wants the second waits for the event's transaction
    rather than deadlocking with it (PostgreSQL would abort one of the two). The answer
    still lists the executions in the order the workflows were installed."""
    ada = api.create_user("ada")
    low = api.create_workflow(on_event("Numbered first", "signup"))
    high = api.create_workflow(on_event("Numbered second", "signup"))
    api.activate(ada, high)  # installed first: its execution is answered first
    api.activate(ada, low)
    send(api, ada, "signup")  # the listings' rows now exist
    data_dir = api_only.settings.data_dir
    numbered = databases.rows(data_dir, "SELECT workflow_id, number FROM workflow_numbers")
    number = {str(workflow): int(str(n)) for workflow, n in numbered}
    lock = "SELECT 1 FROM log_listings WHERE workflow_number = %s AND user_number = 0 FOR UPDATE"

    with (
        psycopg.connect(databases.database_url(data_dir)) as holder,
        psycopg.connect(databases.database_url(data_dir), autocommit=True) as watcher,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        holder.execute(lock, [number[low]])
        posted = pool.submit(api.post, "/run/event", json={"event": "signup", "userId": ada})
        deadline = time.monotonic() + TIMEOUT
        while watcher.execute(LOCK_WAITERS).fetchone() != (1,):
            assert time.monotonic() < deadline, "the event never waited for the held row"
            assert not posted.done(), posted.result().text
            time.sleep(0.02)
        holder.execute(lock, [number[high]])  # free: the event holds nothing yet
        holder.commit()
        response = posted.result(timeout=TIMEOUT)

    assert response.status_code == 200, response.text
    started = response.json()["executionIds"]
    assert [log["executionId"] for log in api.logs(high)][:1] == started[:1]
    assert [log["executionId"] for log in api.logs(low)][:1] == started[1:]


def test_a_process_with_a_worker_runs_what_it_accepts_with_no_wake_and_no_fetch(
    make_server: Callable[..., Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`solder serve` with its worker claims the runs it accepts for that worker in the
    accepting statement (`executions.KeyedAccepts`): they run at once, no NOTIFY sent and
    no job fetched (the worker's poll is an hour here, so no fetch of its own finds them
    either), and their logs are the same as any run's."""
    monkeypatch.setattr(workers, "_POLL_SECONDS", 3600.0)
    fetches = count_fetches(monkeypatch)
    server = make_server(worker_timeout_seconds=1)
    data_dir = server.settings.data_dir
    wait_until_a_worker_listens(data_dir)
    with api_client(server) as api, listening(data_dir) as listener:
        user_id, workflow_id = api.install(WORKFLOW)
        for n in range(3):
            execution_id = api.run(user_id, workflow_id, {"n": n})
            log = api.wait_for(workflow_id, execution_id)
            assert log["status"] == "succeeded"
            assert log["results"][1]["data"][0][0]["json"] == 2 * n
        assert wakes(listener, 0.3) == [], "no worker was woken"
    assert sum(fetches) == 0, "no fetch found a job"
    assert jobs_of(server) == [], "each run's end took its job"


@contextlib.asynccontextmanager
async def accepting_here(
    server: Server, *, slots: int
) -> AsyncIterator[tuple[executions.KeyedAccepts, workers._JobManager, int]]:
    """A process's accepts and its worker's job manager of `slots` slots, registered, as
    `solder serve` has them (its procrastinate worker not running: what is handed to it
    waits in the manager until it is asked for jobs)."""
    solder = Solder(server.settings)
    assert isinstance(solder.dispatcher, QueueWorker)
    manager = solder.dispatcher.jobs
    manager.concurrency = slots
    accepts = executions.keyed_accepts(solder.db)
    assert accepts.here is manager, "a process with a worker claims what it accepts for it"
    try:
        async with solder.dispatcher.app.open_async():
            worker_id = await manager.register_worker()
            manager.worker = workers._Worker(
                app=solder.dispatcher.app, concurrency=slots, install_signal_handlers=False
            )
            yield accepts, manager, worker_id
    finally:
        await solder.db.dispose()


def keyed_runs(api: Api, count: int) -> list[queue.KeyedRun]:
    """`count` run requests of WORKFLOW by the client's key, as the API makes them."""
    user_id, workflow_id = api.install(WORKFLOW)
    key_hash = keys.hash_key(str(api.headers["Authorization"]).split()[-1])
    return [
        queue.KeyedRun(key_hash, workflow_id, user_id, ids.execution_id(), f'{{"n": {n}}}')
        for n in range(count)
    ]


def test_runs_beyond_the_workers_free_slots_are_queued_for_any_worker(
    make_server: Callable[..., Server],
    api_only: Server,
    api: Api,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Of the runs accepted together, as many as the process's worker has slots free are
    claimed for it (their jobs `doing` for it, their executions `running`, handed to it
    with no fetch); the rest are queued for any worker. A worker that stops before running
    what it was handed puts it back in the queue, as it does what it fetched."""
    runs = keyed_runs(api, 5)
    data_dir = api_only.settings.data_dir
    fetches = count_fetches(monkeypatch)

    async def run() -> tuple[list[Any], int, list[Any]]:
        async with accepting_here(api_only, slots=3) as (accepts, manager, worker_id):
            manager.in_hand = 1  # a slot taken by a run of its own
            answers = await asyncio.gather(*(accepts.accept(run) for run in runs))
            found = databases.rows(
                data_dir,
                "SELECT e.id, e.status, e.lease IS NOT NULL, j.status::text, j.worker_id"
                " FROM executions AS e JOIN procrastinate_jobs AS j ON j.id = e.job_id",
            )
            handed = await manager.fetch_job([QUEUE], worker_id)
            assert fetches == [], "handed out without a fetch"
            assert handed is not None
            assert handed.task_kwargs["execution_id"] == runs[0].id
            await manager.retry_job(handed)
            await manager.unregister_worker(worker_id)
            return list(answers), worker_id, found

    answers, worker_id, found = asyncio.run(run())
    assert answers == ["here", "here", "queued", "queued", "queued"]
    by_id = {str(row[0]): row[1:] for row in found}
    assert [by_id[run.id] for run in runs] == [
        ("running", True, "doing", worker_id),
        ("running", True, "doing", worker_id),
        ("queued", False, "todo", None),
        ("queued", False, "todo", None),
        ("queued", False, "todo", None),
    ]
    assert [status for _, status, _, _ in jobs_of(api_only)] == ["todo"] * 5
    make_server(data_dir=data_dir, worker_timeout_seconds=1)
    workflow_id = runs[0].workflow_id
    ended = [api.wait_for(workflow_id, run.id) for run in runs]
    assert [log["status"] for log in ended] == ["succeeded"] * 5
    assert [log["results"][1]["data"][0][0]["json"] for log in ended] == [0, 2, 4, 6, 8]


def test_a_fetch_leaves_the_slots_promised_to_an_accept_in_flight(
    api_only: Server, api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While an accepting statement has slots of the worker promised to it, a fetch
    asks for the other free slots only: the runs the accept claims are not left waiting
    behind jobs fetched for the same slots."""
    user_id, workflow_id = api.install(WORKFLOW)
    for n in range(4):
        api.run(user_id, workflow_id, {"n": n})
    fetches = count_fetches(monkeypatch)

    async def run() -> None:
        async with accepting_here(api_only, slots=3) as (_, manager, worker_id):
            here = manager.reserve(2)
            assert here is not None
            assert here.slots == 2
            rest = manager.reserve(5)
            assert rest is not None
            assert rest.slots == 1, "one slot is still free"
            assert manager.reserve(5) is None, "none is"
            manager.release(rest)
            job = await manager.fetch_job([QUEUE], worker_id)
            assert job is not None
            assert fetches == [1], "one job fetched, for the one slot not promised"
            manager.release(here)
            await manager.retry_job(job)
            await manager.unregister_worker(worker_id)

    asyncio.run(run())


def test_a_worker_presumed_dead_is_claimed_nothing_at_the_accept(
    make_server: Callable[..., Server], api_only: Server, api: Api
) -> None:
    """A process whose worker's registration is gone (another worker found it silent and
    removed it) has its runs queued for any worker, not claimed for a worker no crash
    sweep would look for; the accept does not fail on it."""
    runs = keyed_runs(api, 2)
    data_dir = api_only.settings.data_dir

    async def run() -> list[Any]:
        async with accepting_here(api_only, slots=4) as (accepts, _, worker_id):
            databases.rows(
                data_dir, f"DELETE FROM procrastinate_workers WHERE id = {worker_id} RETURNING id"
            )
            return list(await asyncio.gather(*(accepts.accept(run) for run in runs)))

    assert asyncio.run(run()) == ["queued", "queued"]
    assert [status for _, status, _, _ in jobs_of(api_only)] == ["todo"] * 2
    make_server(data_dir=data_dir, worker_timeout_seconds=1)
    ended = [api.wait_for(runs[0].workflow_id, run.id) for run in runs]
    assert [log["status"] for log in ended] == ["succeeded"] * 2

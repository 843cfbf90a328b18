"""Logs compressed with dictionaries trained on each tenant's own logs: served byte for byte
as before, one tenant's never used for another's, never deleted while a log needs one."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import zstandard
from sqlalchemy import delete

from solder import compaction, recompressing, training
from solder.app import Solder
from solder.compaction import Compaction, Swept, TrainingFailed, train_apart
from solder.dispatch import EmbeddedDispatcher
from solder.recompressing import RecompressionFailed
from solder.settings import Settings
from solder.store import codec
from solder.store.database import Database
from solder.store.schema import tenants
from tests import databases
from tests.conftest import TIMEOUT, Api, Server, api_client
from tests.processes import environment, solder
from tests.runs import all_logs, wait_until_all_ended

MIN_LOGS = 24  # the server's threshold is 1,000: the tests train on fewer


def echo(name: str = "Echo") -> dict[str, Any]:
    return {
        "name": name,
        "trigger": {"type": "webhook"},
        "blocks": [
            {"name": "echo", "connector": "transform", "config": {"expression": "{{ trigger }}"}}
        ],
    }


def payload(tenant: str, n: int) -> dict[str, Any]:
    """A signup, as tenants send them: the same shape every time, some values their own."""
    return {
        "email": f"person{n}@{tenant}.example",
        "plan": "pro" if n % 3 else "free",
        "source": f"{tenant}-signup-form-marker",
        "n": n,
    }


def run_many(
    api: Api, tenant: str, count: int, start: int = 0, name: str = "Echo"
) -> tuple[str, list[str]]:
    """A new workflow of `tenant` and `count` ended runs of it: its id and theirs."""
    user_id, workflow_id = api.install(echo(name), username=f"{tenant}-{name.lower()}")
    ids = [api.run(user_id, workflow_id, payload(tenant, n)) for n in range(start, start + count)]
    wait_until_all_ended(api, workflow_id, count)
    return workflow_id, ids


def compact(settings: Settings, **sweep: Any) -> Swept:
    """One compaction sweep on a server's database, as its own sweep would run it."""
    settle_ms = sweep.pop("settle_ms", 0)
    pool_size = sweep.pop("pool_size", 10)

    async def run() -> Swept:
        db = Database(settings.database_url, pool_size=pool_size)
        try:
            sweeping = Compaction(
                db, settings, min_logs=MIN_LOGS, settle_ms=settle_ms, switch_seconds=0
            )
            return await sweeping.sweep(**sweep)
        finally:
            await db.dispose()

    return asyncio.run(run())


def blob(value: object) -> bytes:
    assert isinstance(value, bytes), value
    return value


def pairs(data_dir: Path, sql: str) -> dict[str, str]:
    return {str(key): str(value) for key, value in databases.rows(data_dir, sql)}


def stored(data_dir: Path) -> dict[str, bytes]:
    """Each execution's stored log value, as it lies in the database."""
    return {
        str(execution_id): blob(log)
        for execution_id, log in databases.rows(
            data_dir, "SELECT id, log FROM executions WHERE log IS NOT NULL"
        )
    }


def dictionaries(data_dir: Path) -> dict[tuple[str, int], bytes]:
    """Every dictionary's content, by tenant id and dictionary id."""
    found = {}
    for tenant_id, id_, content in databases.rows(
        data_dir, "SELECT tenant_id, id, content FROM log_dictionaries ORDER BY tenant_id, id"
    ):
        assert isinstance(id_, int)
        found[str(tenant_id), id_] = blob(content)
    return found


def pages(api: Api, workflow_id: str) -> list[bytes]:
    """Every page of a workflow's logs, as the bytes the API answers, `nextCursor`
    included: a cursor names the execution's position in its listing, which a
    recompression must leave as it was."""
    found = []
    for page in range(1, 100):
        response = api.get(f"/workflows/{workflow_id}/logs", params={"limit": 30, "page": page})
        assert response.status_code == 200, response.text
        found.append(response.content)
        if not orjson.loads(response.content)["data"]:
            return found
    raise AssertionError("too many pages")


def until_stored_with(
    api: Api, data_dir: Path, user_id: str, workflow_id: str, prefix: bytes
) -> str:
    """Run until the server stores a new log starting with `prefix`: it picks up a new
    dictionary within seconds. That run's execution id."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        execution_id = api.run(user_id, workflow_id, payload("acme", 10_000))
        api.wait_for(workflow_id, execution_id)
        if stored(data_dir)[execution_id].startswith(prefix):
            return execution_id
        time.sleep(0.5)
    raise AssertionError(f"no new log was stored with {prefix!r} within {TIMEOUT} s")


def user_of(api: Api, workflow_id: str) -> str:
    user_id: str = api.logs(workflow_id)[0]["userId"]
    return user_id


def test_recompressing_with_a_trained_dictionary_changes_no_byte_the_api_serves(
    server: Server, api: Api
) -> None:
    data_dir = server.settings.data_dir
    workflow_id, ids = run_many(api, "acme", MIN_LOGS + 8)
    before = pages(api, workflow_id)
    old = stored(data_dir)
    assert all(value[0] == codec.SKELETON for value in old.values())

    swept = compact(server.settings, by_hand=True)

    assert (swept.trained, swept.recompressed, swept.unreadable) == (1, len(ids), 0)
    new = stored(data_dir)
    assert all(value.startswith(codec.prefix(1)) for value in new.values())
    assert sum(map(len, new.values())) < sum(map(len, old.values())) / 2
    assert pages(api, workflow_id) == before, "every page, byte for byte"

    # The engine writes new logs with the dictionary once the server has picked it up.
    user_id = user_of(api, workflow_id)
    fresh = until_stored_with(api, data_dir, user_id, workflow_id, codec.prefix(1))
    served = next(log for log in api.logs(workflow_id) if log["executionId"] == fresh)
    assert orjson.loads(databases.stored_logs(data_dir)[fresh]) == served
    assert served["results"][1]["data"][0][0]["json"] == payload("acme", 10_000)


def plain_json(data_dir: Path, execution_id: str) -> bytes:
    """Store an execution's log as plain JSON, as Solder wrote logs before compression."""
    document = databases.stored_logs(data_dir)[execution_id]
    literal = (
        f"decode('{document.hex()}', 'hex')" if databases.on_postgres() else f"X'{document.hex()}'"
    )
    databases.execute(
        data_dir, f"UPDATE executions SET log = {literal} WHERE id = '{execution_id}'"
    )
    return document


def test_logs_stored_before_and_after_a_dictionary_read_together_on_one_page(
    server: Server, api: Api
) -> None:
    data_dir = server.settings.data_dir
    workflow_id, ids = run_many(api, "acme", MIN_LOGS)
    plain_json(data_dir, ids[-1])
    expected = {log["executionId"]: log for log in all_logs(api, workflow_id)}

    # Trained, but not yet applied to the stored logs (the sweep leaves it to settle).
    swept = compact(server.settings, settle_ms=3_600_000)
    assert (swept.trained, swept.recompressed) == (1, 0)
    fresh = until_stored_with(
        api, data_dir, user_of(api, workflow_id), workflow_id, codec.prefix(1)
    )

    page = api.logs(workflow_id, limit=30)
    assert page[0]["executionId"] == fresh
    values = stored(data_dir)
    assert {values[log["executionId"]][:1] for log in page} == {
        b"{",  # as written before compression
        bytes([codec.SKELETON]),
        bytes([codec.TRAINED]),
    }
    for log in page:
        if log["executionId"] in expected:
            assert log == expected[log["executionId"]]


def test_a_tenants_dictionary_is_trained_on_its_logs_only_and_used_for_its_logs_only(
    server: Server,
) -> None:
    data_dir = server.settings.data_dir
    workflows = {}
    with (
        api_client(server, "acme") as acme,
        api_client(server, "globex") as globex,
        api_client(server, "initech") as initech,
    ):
        workflows["acme"] = run_many(acme, "acme", MIN_LOGS)[0]
        workflows["globex"] = run_many(globex, "globex", MIN_LOGS + 4)[0]
        workflows["initech"] = run_many(initech, "initech", 3)[0]  # too few to train on
        before = {
            "acme": pages(acme, workflows["acme"]),
            "globex": pages(globex, workflows["globex"]),
        }

        swept = compact(server.settings, by_hand=True)

        assert swept.trained == 2
        tenant_ids = pairs(data_dir, "SELECT name, id FROM tenants")
        found = dictionaries(data_dir)
        assert set(found) == {(tenant_ids["acme"], 1), (tenant_ids["globex"], 1)}
        acme_dictionary = found[tenant_ids["acme"], 1]
        globex_dictionary = found[tenant_ids["globex"], 1]
        assert b"acme-signup-form-marker" in acme_dictionary, "learned from its own logs"
        assert b"globex" not in acme_dictionary, "and from no one else's"
        assert b"acme" not in globex_dictionary
        assert pages(acme, workflows["acme"]) == before["acme"]
        assert pages(globex, workflows["globex"]) == before["globex"]
        assert all(
            log["results"][1]["data"][0][0]["json"]["source"] == "initech-signup-form-marker"
            for log in initech.logs(workflows["initech"])
        )

    # Both are dictionary 1 of their tenant: a log names its dictionary within its own
    # tenant, and another tenant's dictionary 1 does not read it.
    execution_tenants = pairs(data_dir, "SELECT id, tenant_id FROM executions")
    for execution_id, value in stored(data_dir).items():
        if execution_tenants[execution_id] == tenant_ids["initech"]:
            assert value[0] == codec.SKELETON
            continue
        assert value.startswith(codec.prefix(1))
        if execution_tenants[execution_id] == tenant_ids["globex"]:
            wrong = codec.Dictionary(tenant_ids["acme"], 1, acme_dictionary)
            right = codec.Dictionary(tenant_ids["globex"], 1, globex_dictionary)
            try:
                misread: bytes | None = codec.unpack(value, wrong)
            except zstandard.ZstdError:
                misread = None
            assert misread != codec.unpack(value, right)


def test_a_log_whose_dictionary_is_missing_is_an_error_that_says_so(
    make_server: Callable[..., Server], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    server = make_server(data_dir=data_dir)
    with api_client(server) as api:
        workflow_id, _ = run_many(api, "acme", MIN_LOGS)
    compact(server.settings, by_hand=True)
    server.stop()
    databases.execute(data_dir, "DELETE FROM log_dictionaries")  # the fault: lost by hand

    restarted = make_server(data_dir=data_dir)  # knows no dictionary yet
    with api_client(restarted) as api:
        response = api.get(f"/workflows/{workflow_id}/logs")
    assert response.status_code == 500
    error = response.json()
    assert error["error"] == "log_unreadable"
    assert "was compressed with dictionary 1 of its tenant" in error["message"]
    assert "no longer in the database" in error["message"]


def test_deleting_a_tenant_deletes_its_dictionaries(server: Server, api: Api) -> None:
    run_many(api, "acme", MIN_LOGS)
    compact(server.settings, by_hand=True)
    assert len(dictionaries(server.settings.data_dir)) == 1

    async def delete_tenant() -> None:
        db = Database(server.settings.database_url)
        try:
            async with db.write() as conn:
                await conn.execute(delete(tenants).where(tenants.c.name == "acme"))
        finally:
            await db.dispose()

    asyncio.run(delete_tenant())
    assert dictionaries(server.settings.data_dir) == {}


def test_a_rerun_of_a_recompressed_execution_gets_its_trigger_from_the_log(
    server: Server, api: Api
) -> None:
    data_dir = server.settings.data_dir
    workflow_id, ids = run_many(api, "acme", MIN_LOGS)
    original = next(log for log in api.logs(workflow_id, limit=30) if log["executionId"] == ids[5])
    compact(server.settings, by_hand=True)
    [(trigger_id, trigger_data)] = databases.rows(
        data_dir, f"SELECT trigger_id, trigger_data FROM executions WHERE id = '{ids[5]}'"
    )
    assert (trigger_id, trigger_data) == ("", ""), "stored once: in the log"

    response = api.post(f"/workflows/{workflow_id}/rerun/{ids[5]}")
    assert response.status_code == 200, response.text
    rerun = api.wait_for(workflow_id, response.json()["executionId"])
    assert rerun["rerunOf"] == ids[5]
    assert rerun["results"][0]["connectorId"] == original["results"][0]["connectorId"]
    assert rerun["results"][0]["data"][0][0]["json"] == payload("acme", 5)
    assert rerun["results"][1]["data"][0][0]["json"] == payload("acme", 5)


def test_an_older_dictionary_goes_once_no_stored_log_needs_it_and_not_before(
    server: Server, api: Api
) -> None:
    data_dir = server.settings.data_dir
    workflow_id, _ = run_many(api, "acme", MIN_LOGS)
    before = pages(api, workflow_id)
    compact(server.settings, by_hand=True)
    # A second dictionary, left to settle: every log still needs the first.
    assert compact(server.settings, retrain=True, settle_ms=3_600_000).trained == 1
    assert [id_ for _, id_ in dictionaries(data_dir)] == [1, 2]
    # The fault: the second marked as applied to every log, when none was rewritten.
    databases.execute(data_dir, "UPDATE log_dictionaries SET compacted_at = 1 WHERE id = 2")

    swept = compact(server.settings)

    assert swept.deleted == 0, "the stored logs still need dictionary 1"
    assert [id_ for _, id_ in dictionaries(data_dir)] == [1, 2]
    assert pages(api, workflow_id) == before

    databases.execute(data_dir, "UPDATE log_dictionaries SET compacted_at = NULL WHERE id = 2")
    swept = compact(server.settings, by_hand=True)
    assert (swept.recompressed, swept.deleted) == (MIN_LOGS, 1)
    assert [id_ for _, id_ in dictionaries(data_dir)] == [2]
    assert all(value.startswith(codec.prefix(2)) for value in stored(data_dir).values())
    assert pages(api, workflow_id) == before


def test_a_sweep_with_one_database_connection_trains_and_recompresses(
    server: Server, api: Api
) -> None:
    # On PostgreSQL the sweep holds a lock (one process sweeps at a time) on a connection
    # of its own: held on one of the pool's, a pool of one left the sweep's own reads
    # waiting for it until the pool timed out (30 s, then "database unavailable").
    _, ids = run_many(api, "acme", MIN_LOGS)

    swept = compact(server.settings, by_hand=True, pool_size=1)

    assert (swept.busy, swept.trained, swept.recompressed) == (False, 1, len(ids))
    assert all(
        value.startswith(codec.prefix(1)) for value in stored(server.settings.data_dir).values()
    )


def sample(settings: Settings, tenant_id: str, sample_logs: int) -> list[bytes]:
    """The logs a sweep would train the tenant's dictionary on."""

    async def run() -> list[bytes]:
        db = Database(settings.database_url)
        try:
            sweeping = Compaction(db, settings, sample_logs=sample_logs)
            return [log async for chunk in sweeping._sample(tenant_id) for log in chunk]
        finally:
            await db.dispose()

    return asyncio.run(run())


def test_the_training_sample_is_drawn_from_every_workflow_by_its_share_and_all_its_history(
    server: Server, api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Execution ids begin with their time: a range of them, as the sample was once read,
    # would be one stretch of time.
    monkeypatch.setattr(compaction, "SAMPLE_STRETCH", 2)
    _, busy = run_many(api, "acme", 300)
    run_many(api, "acme", 100, name="Quiet")
    logs = stored(server.settings.data_dir)
    tenant_id = pairs(server.settings.data_dir, "SELECT name, id FROM tenants")["acme"]
    order = {logs[execution_id]: n for n, execution_id in enumerate(busy)}

    drawn = sample(server.settings, tenant_id, 100)

    assert len(drawn) == len(set(drawn)) == 100, "no log twice"
    assert set(drawn) <= set(logs.values())
    from_busy = sorted(order[log] for log in drawn if log in order)
    # 50 stretches, each from the busy workflow with a chance of 3 in 4.
    assert 50 <= len(from_busy) <= 95
    assert from_busy[0] < 100, "from its first runs"
    assert from_busy[-1] >= 200, "to its last"
    # A tenant with no more logs than the sample: all of them, each once.
    assert sorted(sample(server.settings, tenant_id, 400)) == sorted(logs.values())


def test_one_process_sweeps_at_a_time(server: Server, api: Api) -> None:
    if not databases.on_postgres():
        pytest.skip("PostgreSQL only: on SQLite one process writes at a time anyway")
    import psycopg

    data_dir = server.settings.data_dir
    run_many(api, "acme", MIN_LOGS)
    with psycopg.connect(server.settings.database_url, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (compaction._SWEEP_LOCK,))
        swept = compact(server.settings, by_hand=True)
        assert (swept.busy, swept.trained, swept.recompressed) == (True, 0, 0)
        assert all(value[0] == codec.SKELETON for value in stored(data_dir).values())
    # The other process is gone, and its lock with it.
    swept = compact(server.settings, by_hand=True)
    assert (swept.busy, swept.trained, swept.recompressed) == (False, 1, MIN_LOGS)


def test_without_dictionaries_logs_stay_on_the_skeleton(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(log_dictionaries=False)
    with api_client(server) as api:
        run_many(api, "acme", MIN_LOGS)
    assert compact(server.settings, by_hand=True).trained == 0
    assert dictionaries(server.settings.data_dir) == {}
    assert all(v[0] == codec.SKELETON for v in stored(server.settings.data_dir).values())


def test_the_cli_trains_and_recompresses_now(server: Server, api: Api, tmp_path: Path) -> None:
    data_dir = server.settings.data_dir
    workflow_id, _ = run_many(api, "acme", 1_000)  # the server's threshold
    before = pages(api, workflow_id)
    env = environment(data_dir)

    result = solder("compact", "--tenant", "acme", env=env)

    assert result.returncode == 0, result.stderr
    said = " ".join(result.stderr.split())
    assert "Trained 1 log dictionaries, recompressed 1,000 logs" in said
    assert all(value.startswith(codec.prefix(1)) for value in stored(data_dir).values())
    assert pages(api, workflow_id) == before
    refused = solder("compact", "--tenant", "nobody", env=env)
    assert refused.returncode == 1
    assert "no tenant named 'nobody'" in refused.stderr


def test_a_training_process_that_fails_leaves_the_logs_as_they_were(
    server: Server, api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = server.settings.data_dir
    workflow_id, _ = run_many(api, "acme", MIN_LOGS)
    before, old = pages(api, workflow_id), stored(data_dir)
    # The fault: the child cannot start Solder's training (a Python without it).
    monkeypatch.setattr(sys, "executable", str(Path(sys.base_prefix) / "bin" / "python3"))

    with pytest.raises(TrainingFailed, match=r"exited with status 1: .*No module named 'solder'"):
        compact(server.settings, by_hand=True)

    assert dictionaries(data_dir) == {}
    assert stored(data_dir) == old
    assert pages(api, workflow_id) == before
    monkeypatch.undo()
    assert compact(server.settings, by_hand=True).trained == 1, "the next sweep trains"


def test_a_training_that_ends_part_way_leaves_no_read_transaction_open(
    server: Server, api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sample is read in one read transaction while the training child takes it, a
    chunk at a time. A child that ended part way (its pipe broken) left the transaction
    open, its connection checked out, until the garbage collector found the sample: on
    PostgreSQL a session idle in a transaction (vacuum held back meanwhile), given back
    to a pool disposed by then and never closed (psycopg's ResourceWarning)."""
    run_many(api, "acme", MIN_LOGS)
    settings = server.settings

    async def ends_after_a_chunk(
        request: training.Request, sample: AsyncIterator[list[bytes]]
    ) -> training.Trained:
        async for _ in sample:
            break  # the child took a chunk and ended
        raise TrainingFailed("the training process exited with status 1")

    monkeypatch.setattr(compaction, "train_apart", ends_after_a_chunk)

    async def run() -> tuple[int, list[tuple[object, ...]]]:
        db = Database(settings.database_url)
        try:
            sweeping = Compaction(db, settings, min_logs=MIN_LOGS, settle_ms=0)
            with pytest.raises(TrainingFailed):
                await sweeping.sweep(by_hand=True)
            in_use = db.engine.pool.checkedout()  # type: ignore[attr-defined]
            idle_in_transaction = (
                databases.rows(
                    settings.data_dir,
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    " AND state LIKE 'idle in transaction%'",
                )
                if databases.on_postgres()
                else []
            )
            return in_use, idle_in_transaction
        finally:
            await db.dispose()

    in_use, idle_in_transaction = asyncio.run(run())
    assert in_use == 0, "the sample's connection given back as the training failed"
    assert idle_in_transaction == []


def documents(count: int) -> list[bytes]:
    return [
        orjson.dumps({"executionId": f"e{n}", "data": payload("acme", n)}) for n in range(count)
    ]


async def in_chunks(logs: list[bytes], size: int = 100) -> AsyncIterator[list[bytes]]:
    for start in range(0, len(logs), size):
        yield logs[start : start + size]


def test_the_training_process_trains_what_training_here_would() -> None:
    stored_logs = [codec.pack(document) for document in documents(400)]
    request = training.Request(dictionaries={}, current=None)

    apart = asyncio.run(train_apart(request, in_chunks(stored_logs)))

    assert apart == training.handle(request, stored_logs)
    assert isinstance(apart, training.Trained)
    assert (apart.readable, apart.trained_on) == (400, 350)
    assert apart.after < apart.before / 2


def test_logs_too_few_to_train_on_are_declined_not_a_failure() -> None:
    logs = [codec.pack(d) for d in documents(3)]
    result = asyncio.run(train_apart(training.Request({}, None), in_chunks(logs)))
    assert isinstance(result, training.Untrainable)
    assert result.readable == 3
    assert result.reason


def test_a_stopped_sweep_stops_its_training_process(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[asyncio.subprocess.Process] = []
    spawn = asyncio.create_subprocess_exec

    async def recorded(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        child = await spawn(*args, **kwargs)
        started.append(child)
        spawned.set()
        return child

    monkeypatch.setattr(asyncio, "create_subprocess_exec", recorded)
    logs = [codec.pack(d) for d in documents(4_000)]
    spawned = asyncio.Event()

    async def stop_it() -> None:
        task = asyncio.create_task(train_apart(training.Request({}, None), in_chunks(logs)))
        await spawned.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(stop_it())
    assert started[0].returncode == -signal.SIGKILL, "the child was killed and waited for"


def trained_not_applied(server: Server, api: Api, count: int) -> str:
    """A workflow with `count` ended runs, its tenant's first dictionary trained but its
    stored logs not yet recompressed (left to settle): its id."""
    workflow_id, _ = run_many(api, "acme", count)
    swept = compact(server.settings, settle_ms=3_600_000)
    assert (swept.trained, swept.recompressed) == (1, 0)
    return workflow_id


def on_dictionary(data_dir: Path, dictionary_id: int) -> int:
    """How many stored logs are compressed with the tenant's dictionary `dictionary_id`."""
    return sum(value.startswith(codec.prefix(dictionary_id)) for value in stored(data_dir).values())


def test_recompressing_beside_a_server_taking_runs_loses_no_run_and_changes_no_log(
    server: Server, api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep in another process (here its own connections, as `solder compact` beside
    a running server) writes recompressed logs while the server writes the runs it
    takes: on SQLite they take turns on the write lock, and neither loses anything."""
    data_dir = server.settings.data_dir
    total = 4 * MIN_LOGS
    workflow_id = trained_not_applied(server, api, total)
    before = {log["executionId"]: log for log in all_logs(api, workflow_id)}
    user_id = user_of(api, workflow_id)
    monkeypatch.setattr(compaction, "BATCH", 4)  # many short write transactions
    swept: list[Swept] = []
    sweeping = threading.Thread(target=lambda: swept.append(compact(server.settings)))

    sweeping.start()
    fresh: list[str] = []
    while sweeping.is_alive() or len(fresh) < 8:
        fresh.append(api.run(user_id, workflow_id, payload("acme", 20_000 + len(fresh))))
    sweeping.join(TIMEOUT)

    assert len(swept) == 1, "the sweep ended without an error"
    assert swept[0].recompressed >= total
    assert swept[0].unreadable == 0
    after = {
        log["executionId"]: log
        for log in wait_until_all_ended(api, workflow_id, total + len(fresh))
    }
    assert all(after[execution_id]["status"] == "succeeded" for execution_id in fresh)
    assert all(after[id_] == log for id_, log in before.items()), "the old logs as they were"
    assert on_dictionary(data_dir, 1) >= total


def children(monkeypatch: pytest.MonkeyPatch) -> list[asyncio.subprocess.Process]:
    """The child processes started from here on, as they start."""
    started: list[asyncio.subprocess.Process] = []
    spawn = asyncio.create_subprocess_exec

    async def recorded(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        child = await spawn(*args, **kwargs)
        started.append(child)
        return child

    monkeypatch.setattr(asyncio, "create_subprocess_exec", recorded)
    return started


def test_the_recompressing_process_recompresses_what_recompressing_here_would(
    server: Server, api: Api
) -> None:
    data_dir = server.settings.data_dir
    trained_not_applied(server, api, MIN_LOGS)
    old = stored(data_dir)
    [((tenant_id, dictionary_id), content)] = dictionaries(data_dir).items()
    request = recompressing.Request(
        database_url=server.settings.database_url,
        tenant_id=tenant_id,
        dictionaries={dictionary_id: content},
        current=dictionary_id,
        batch=5,
    )

    async def both() -> tuple[list[recompressing.Batch], list[recompressing.Batch]]:
        db = Database(server.settings.database_url)
        try:
            here = [batch async for batch in recompressing.batches(db, request)]
        finally:
            await db.dispose()
        async with recompressing.apart(request) as batches:
            return here, [batch async for batch in batches]

    here, apart = asyncio.run(both())

    assert apart == here
    assert [batch.read for batch in apart] == [5, 5, 5, 5, 4]
    rewritten = dict(pair for batch in apart for pair in batch.rewritten)
    assert rewritten.keys() == old.keys()
    assert all(value.startswith(codec.prefix(dictionary_id)) for value in rewritten.values())
    assert stored(data_dir) == old, "the writes are the sweep's, not the child's"


def test_a_stored_log_that_cannot_be_read_is_left_as_it_is_and_named(
    server: Server, api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = server.settings.data_dir
    trained_not_applied(server, api, MIN_LOGS)
    lost = sorted(stored(data_dir))[3]
    damaged = codec.prefix(7) + b"not zstd"  # the fault: a dictionary the tenant never had
    literal = (
        f"decode('{damaged.hex()}', 'hex')" if databases.on_postgres() else f"X'{damaged.hex()}'"
    )
    databases.execute(data_dir, f"UPDATE executions SET log = {literal} WHERE id = '{lost}'")

    with caplog.at_level(logging.ERROR, logger="solder.compaction"):
        swept = compact(server.settings)

    assert (swept.recompressed, swept.unreadable) == (MIN_LOGS - 1, 1)
    values = stored(data_dir)
    assert values[lost] == damaged
    assert on_dictionary(data_dir, 1) == MIN_LOGS - 1
    assert f"the stored log of execution {lost} cannot be read" in caplog.text


def test_a_recompressing_process_that_cannot_start_leaves_the_logs_as_they_were(
    server: Server, api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = server.settings.data_dir
    workflow_id = trained_not_applied(server, api, MIN_LOGS)
    before, old = pages(api, workflow_id), stored(data_dir)
    # The fault: the child cannot start Solder (a Python without it).
    monkeypatch.setattr(sys, "executable", str(Path(sys.base_prefix) / "bin" / "python3"))

    with pytest.raises(
        RecompressionFailed, match=r"exited with status 1: .*No module named 'solder'"
    ):
        compact(server.settings)

    assert stored(data_dir) == old
    assert pages(api, workflow_id) == before
    monkeypatch.undo()
    assert compact(server.settings).recompressed == MIN_LOGS, "the next sweep recompresses"
    assert pages(api, workflow_id) == before


TOTAL = 4 * MIN_LOGS


def in_small_batches(
    server: Server, api: Api, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, list[bytes], list[asyncio.subprocess.Process]]:
    """`TOTAL` logs of a new workflow left to recompress, 4 a batch: the workflow's id,
    its pages as served, and the list of the child processes started from here on."""
    workflow_id = trained_not_applied(server, api, TOTAL)
    before = pages(api, workflow_id)
    monkeypatch.setattr(compaction, "BATCH", 4)
    return workflow_id, before, children(monkeypatch)


def test_a_recompressing_process_killed_midway_leaves_every_log_readable(
    server: Server, api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = server.settings.data_dir
    workflow_id, before, started = in_small_batches(server, api, monkeypatch)
    written: list[int] = []

    def kill_after_two(count: int) -> None:
        written.append(count)
        if len(written) == 2:
            started[0].kill()  # the fault: the kernel's OOM killer, say

    with pytest.raises(RecompressionFailed, match=f"exited with status {-signal.SIGKILL}"):
        compact(server.settings, on_batch=kill_after_two)

    assert written == [4, 4]
    assert on_dictionary(data_dir, 1) == 8, "the batches written before stay written"
    assert pages(api, workflow_id) == before, "every log reads as before, old or new"
    assert compact(server.settings).recompressed == TOTAL - 8, "the next sweep goes on"
    assert on_dictionary(data_dir, 1) == TOTAL
    assert pages(api, workflow_id) == before


def test_a_stopped_sweep_stops_its_recompressing_process(
    server: Server, api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = server.settings.data_dir
    workflow_id, before, started = in_small_batches(server, api, monkeypatch)

    async def stop_it() -> None:
        db = Database(server.settings.database_url)
        try:
            sweeping = Compaction(db, server.settings, settle_ms=0, switch_seconds=0)
            first = asyncio.Event()
            task = asyncio.create_task(sweeping.sweep(on_batch=lambda _: first.set()))
            await first.wait()
            task.cancel()  # as the server does when it stops
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            await db.dispose()

    asyncio.run(stop_it())

    assert len(started) == 1
    assert started[0].returncode == -signal.SIGKILL, "the child was killed and waited for"
    assert 0 < on_dictionary(data_dir, 1) < TOTAL
    assert pages(api, workflow_id) == before


def test_the_servers_paced_recompression_waits_while_runs_wait_for_a_worker(
    server: Server, api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SQLite one transaction writes at a time: the background sweep writes its
    recompressed logs only once every accepted run is taken by a worker, so that a
    burst of runs does not queue behind it (bench/RESULTS.md, scenario 2)."""
    if databases.on_postgres():
        pytest.skip("SQLite only: PostgreSQL's runs do not wait on one writer")
    data_dir = server.settings.data_dir
    workflow_id = trained_not_applied(server, api, MIN_LOGS)
    before = pages(api, workflow_id)
    monkeypatch.setattr(compaction, "YIELD_SECONDS", TIMEOUT)

    async def scenario() -> None:
        # A second Solder on the same database, not started: its dispatcher has no
        # worker, so a run it is told of stays waiting until a worker looks for work.
        other = Solder(server.settings)
        assert isinstance(other.dispatcher, EmbeddedDispatcher)
        dispatcher, sweeping = other.dispatcher, other.compaction
        sweeping.settle_ms = 0
        asked = asyncio.Event()
        quiet = sweeping.quiet
        assert quiet is not None, "the server's sweep waits on its dispatcher"

        async def watched() -> None:
            asked.set()
            await quiet()

        sweeping.quiet = watched
        try:
            dispatcher.notify()  # a run accepted, no worker has taken it
            task = asyncio.create_task(sweeping.sweep())
            await asyncio.wait_for(asked.wait(), TIMEOUT)
            await asyncio.sleep(0.5)
            assert not task.done()
            assert on_dictionary(data_dir, 1) == 0, "nothing written while the run waits"
            await dispatcher.claim()  # a worker looks for work and takes what is queued
            swept = await asyncio.wait_for(task, TIMEOUT)
            assert swept.recompressed == MIN_LOGS
        finally:
            await other.db.dispose()

    asyncio.run(scenario())
    assert on_dictionary(data_dir, 1) == MIN_LOGS
    assert pages(api, workflow_id) == before


def test_under_a_constant_stream_of_runs_the_paced_recompression_still_ends(
    server: Server, api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    if databases.on_postgres():
        pytest.skip("SQLite only: PostgreSQL's runs do not wait on one writer")
    data_dir = server.settings.data_dir
    workflow_id = trained_not_applied(server, api, MIN_LOGS)
    before = pages(api, workflow_id)
    monkeypatch.setattr(compaction, "YIELD_SECONDS", 0.05)
    monkeypatch.setattr(compaction, "BATCH", 4)

    async def scenario() -> Swept:
        other = Solder(server.settings)
        assert other.dispatcher is not None
        other.compaction.settle_ms = 0
        try:
            other.dispatcher.notify()  # waits for a worker that never comes
            return await asyncio.wait_for(other.compaction.sweep(), TIMEOUT)
        finally:
            await other.db.dispose()

    assert asyncio.run(scenario()).recompressed == MIN_LOGS
    assert on_dictionary(data_dir, 1) == MIN_LOGS
    assert pages(api, workflow_id) == before

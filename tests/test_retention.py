"""Logs are purged once past their retention (the workflow's, else the tenant's, else the
server's); running executions never are; on SQLite the space goes back to the file system."""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

from solder.retention import RESERVE_PAGES, Retention
from solder.store.database import Database
from tests import databases
from tests.conftest import TIMEOUT, Api, Server, api_client
from tests.processes import environment, solder
from tests.runs import wait_until_all_ended
from tests.test_protocol import assert_error
from tests.upstream import Reply, Upstream


def definition(upstream: Upstream) -> dict[str, Any]:
    return {
        "name": "Short-lived",
        "trigger": {"type": "webhook"},
        "blocks": [
            {"name": "call", "connector": "http", "config": {"url": f"{upstream.base_url}/x"}}
        ],
    }


def test_logs_past_retention_are_purged_and_running_ones_kept(
    make_server: Callable[..., Server], upstream: Upstream
) -> None:
    upstream.route("/x", Reply(200, {}))
    # Retention of about a second, swept often.
    server = make_server(log_retention_days=1.5 / 86400, retention_sweep_seconds=0.1)
    with api_client(server) as api:
        user_id, workflow_id = api.install(definition(upstream))
        done = api.run(user_id, workflow_id)
        api.wait_for(workflow_id, done)
        upstream.hold()
        running = api.run(user_id, workflow_id)

        deadline = time.monotonic() + TIMEOUT
        while any(log["executionId"] == done for log in api.logs(workflow_id)):
            assert time.monotonic() < deadline, "the expired log was not purged"
            time.sleep(0.1)
        time.sleep(2)  # more sweeps, with the held run itself past retention by now
        [kept] = api.logs(workflow_id)
        assert kept["executionId"] == running
        assert kept["stoppedAt"] is None, "still running, so kept"
        upstream.release()
        # Once it ends, it is past retention: the next sweep purges it.
        while api.logs(workflow_id):
            assert time.monotonic() < deadline + TIMEOUT, "the ended run was not purged"
            time.sleep(0.1)
        assert len(upstream.requests) == 2


def test_logs_within_retention_stay(make_server: Callable[..., Server], upstream: Upstream) -> None:
    upstream.route("/x", Reply(200, {}))
    server = make_server(retention_sweep_seconds=0.1)
    with api_client(server) as api:
        user_id, workflow_id = api.install(definition(upstream))
        execution_id = api.run(user_id, workflow_id)
        api.wait_for(workflow_id, execution_id)
        time.sleep(0.5)
        assert [log["executionId"] for log in api.logs(workflow_id)] == [execution_id]


# --- overrides: per tenant and per workflow ----------------------------------------

DAY_MS = 86_400_000


def quick(name: str) -> dict[str, Any]:
    """A workflow that runs in an instant and needs no upstream."""
    return {
        "name": name,
        "trigger": {"type": "webhook"},
        "blocks": [{"name": "echo", "connector": "transform", "config": {"expression": "{{ 1 }}"}}],
    }


def put_days(api: Api, path: str, days: object) -> dict[str, Any]:
    response = api.put(path, json={"days": days})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_a_workflow_keeps_its_own_retention_else_its_tenants_else_the_servers(
    server: Server,
) -> None:
    with api_client(server) as api:
        assert api.get("/retention").json() == {
            "days": 7,
            "source": "default",
            "tenantDays": None,
            "defaultDays": 7,
            "workflows": [],
        }
        workflow_id = api.create_workflow(quick("Sync"))
        assert api.get(f"/workflows/{workflow_id}/retention").json() == {
            "workflowId": workflow_id,
            "name": "Sync",
            "days": 7,
            "source": "default",
            "workflowDays": None,
        }

        tenant = put_days(api, "/retention", 30)
        assert (tenant["days"], tenant["source"], tenant["tenantDays"]) == (30, "tenant", 30)
        inherited = api.get(f"/workflows/{workflow_id}/retention").json()
        assert (inherited["days"], inherited["source"]) == (30, "tenant")

        own = put_days(api, "/workflows/Sync/retention", 0.5)  # by name, half a day
        assert (own["workflowId"], own["days"], own["source"]) == (workflow_id, 0.5, "workflow")
        assert own["workflowDays"] == 0.5
        assert api.get("/retention").json()["workflows"] == [own]
        assert api.get(f"/2024-03/workflows/{workflow_id}/retention").json() == own

        cleared = put_days(api, f"/workflows/{workflow_id}/retention", None)
        assert (cleared["days"], cleared["source"], cleared["workflowDays"]) == (30, "tenant", None)
        assert api.get("/retention").json()["workflows"] == []
        back = put_days(api, "/retention", None)
        assert (back["days"], back["source"], back["tenantDays"]) == (7, "default", None)


@pytest.mark.parametrize(
    "body",
    [
        {"days": 0},
        {"days": -3},
        {"days": 0.01},  # under an hour
        {"days": 3651},
        {"days": 10**400},
        {"days": 1e308},
        {"days": "30"},
        {"days": True},
        {"days": [30]},
        {},
        [30],
        "30",
    ],
)
def test_a_bad_retention_is_refused_in_the_error_shape(server: Server, body: object) -> None:
    with api_client(server) as api:
        workflow_id = api.create_workflow(quick("Sync"))
        for path in ("/retention", f"/workflows/{workflow_id}/retention"):
            error = assert_error(api.put(path, content=json.dumps(body)), 400)
            assert error["error"] == "invalid_request"
            assert "days" in error["message"]
        assert_error(api.put("/retention", content=b"{not json"), 400)
        assert api.get("/retention").json()["days"] == 7, "nothing changed"
        assert api.get(f"/workflows/{workflow_id}/retention").json()["workflowDays"] is None


def test_the_bounds_of_a_retention_are_accepted(server: Server) -> None:
    with api_client(server) as api:
        assert put_days(api, "/retention", 1 / 24)["days"] == pytest.approx(1 / 24)
        assert put_days(api, "/retention", 3650)["days"] == 3650


def test_a_tenant_can_neither_see_nor_set_another_tenants_retention(server: Server) -> None:
    with api_client(server, "acme") as acme, api_client(server, "globex") as globex:
        workflow_id = acme.create_workflow(quick("Sync"))
        put_days(acme, f"/workflows/{workflow_id}/retention", 90)
        put_days(acme, "/retention", 30)

        assert_error(globex.get(f"/workflows/{workflow_id}/retention"), 404)
        assert_error(globex.put(f"/workflows/{workflow_id}/retention", json={"days": 1}), 404)
        assert_error(globex.put("/workflows/Sync/retention", json={"days": 1}), 404)
        seen = globex.get("/retention").json()
        assert (seen["days"], seen["workflows"]) == (7, [])
        put_days(globex, "/retention", 1)

        mine = acme.get("/retention").json()
        assert (mine["days"], [w["days"] for w in mine["workflows"]]) == (30, [90])
        assert put_days(acme, "/retention", None)["days"] == 7
        assert globex.get("/retention").json()["days"] == 1


def test_retention_needs_an_api_key(server: Server) -> None:
    assert_error(httpx.get(f"{server.base_url}/retention"), 401)
    assert_error(httpx.put(f"{server.base_url}/retention", json={"days": 1}), 401)


def backdate(data_dir: Path, execution_ids: list[str], days: float) -> None:
    """Make executions look as if they had started `days` earlier."""
    ids = ", ".join(f"'{i}'" for i in execution_ids)
    shift = int(days * DAY_MS)
    databases.execute(
        data_dir, f"UPDATE executions SET started_at = started_at - {shift} WHERE id IN ({ids})"
    )


def test_the_purge_honours_the_retention_of_each_workflow_and_tenant(
    make_server: Callable[..., Server], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    server = make_server(data_dir=data_dir, retention_sweep_seconds=0.1)
    with api_client(server, "acme") as acme, api_client(server, "globex") as globex:
        put_days(acme, "/retention", 1)  # acme: 1 day, but its "Archive" keeps 30
        acme_user, acme_short = acme.install(quick("Short"))
        acme_long = acme.create_workflow(quick("Archive"))
        acme.activate(acme_user, acme_long)
        put_days(acme, "/workflows/Archive/retention", 30)
        globex_user, globex_default = globex.install(quick("Default"))  # the server's 7 days
        globex_brief = globex.create_workflow(quick("Brief"))
        globex.activate(globex_user, globex_brief)
        put_days(globex, "/workflows/Brief/retention", 1)

        runs = {
            (acme, acme_short): acme.run(acme_user, acme_short),
            (acme, acme_long): acme.run(acme_user, acme_long),
            (globex, globex_default): globex.run(globex_user, globex_default),
            (globex, globex_brief): globex.run(globex_user, globex_brief),
        }
        for (api, workflow_id), execution_id in runs.items():
            api.wait_for(workflow_id, execution_id)
        backdate(data_dir, list(runs.values()), 2)  # two days old: past 1 day, within 7 and 30
        fresh = acme.run(acme_user, acme_short)
        acme.wait_for(acme_short, fresh)

        deadline = time.monotonic() + TIMEOUT
        while len(acme.logs(acme_short)) > 1 or globex.logs(globex_brief):
            assert time.monotonic() < deadline, "the expired logs were not purged"
            time.sleep(0.1)
        assert [log["executionId"] for log in acme.logs(acme_short)] == [fresh]
        assert globex.logs(globex_brief) == []
        time.sleep(0.5)  # more sweeps: nothing else goes
        assert [log["executionId"] for log in acme.logs(acme_long)] == [runs[acme, acme_long]]
        assert [log["executionId"] for log in globex.logs(globex_default)] == [
            runs[globex, globex_default]
        ]


def cli_ok(*args: str, env: dict[str, str]) -> str:
    result = solder(*args, env=env)
    assert result.returncode == 0, result.stderr
    return " ".join((result.stdout + result.stderr).split())  # as if Rich wrapped nothing


def test_the_cli_sets_shows_and_clears_retention(
    make_server: Callable[..., Server], tmp_path: Path
) -> None:
    server = make_server(data_dir=tmp_path, retention_sweep_seconds=3600)
    env = environment(tmp_path)
    with api_client(server, "acme") as api:
        workflow_id = api.create_workflow(quick("Sync"))
        assert "for 30 days" in cli_ok("retention", "set", "30", "--tenant", "acme", env=env)
        said = cli_ok("retention", "set", "90", "--tenant", "acme", "--workflow", "Sync", env=env)
        assert "for 90 days (its own)" in said
        assert api.get(f"/workflows/{workflow_id}/retention").json()["days"] == 90
        assert api.get("/retention").json()["days"] == 30

        shown = solder("retention", "show", env=env).stdout.splitlines()
        assert shown == [
            "tenant\tworkflow\tdays\tsource",
            "acme\t\t30\ttenant",
            "acme\tSync\t90\tworkflow",
        ]

        cli_ok("retention", "clear", "--tenant", "acme", "--workflow", workflow_id, env=env)
        assert api.get(f"/workflows/{workflow_id}/retention").json()["source"] == "tenant"
        cli_ok("retention", "clear", "--tenant", "acme", env=env)
        assert api.get("/retention").json()["source"] == "default"

        for args, problem in [
            (("set", "0.01", "--tenant", "acme"), "at least 1/24"),
            (("set", "30", "--tenant", "nobody"), "no tenant named 'nobody'"),
            (("set", "30", "--tenant", "acme", "--workflow", "nope"), "no workflow"),
        ]:
            refused = solder("retention", *args, env=env)
            assert refused.returncode == 1
            assert problem in refused.stderr
            assert "Traceback" not in refused.stderr
        assert api.get("/retention").json()["days"] == 7


def test_the_cli_purges_now_and_the_steps_go_with_their_execution(
    make_server: Callable[..., Server], tmp_path: Path
) -> None:
    server = make_server(data_dir=tmp_path, retention_sweep_seconds=3600)
    with api_client(server) as api:
        user_id, workflow_id = api.install(quick("Sync"))
        old, kept = api.run(user_id, workflow_id), api.run(user_id, workflow_id)
        api.wait_for(workflow_id, old)
        api.wait_for(workflow_id, kept)
        backdate(tmp_path, [old], 8)
        # A step row left behind by its execution (as one that crashed mid-write would).
        databases.execute(
            tmp_path,
            "INSERT INTO steps (tenant_id, execution_id, seq, connector_id, block_name, "
            "started_at, stopped_at, data, inputs, app_actions) SELECT tenant_id, id, 0, "
            f"'x', 'echo', 0, 0, '[]', '{{}}', 0 FROM executions WHERE id = '{old}'",
        )
        purged = cli_ok("retention", "purge", env=environment(tmp_path))
        assert "Purged 1 executions" in purged
        assert [log["executionId"] for log in api.logs(workflow_id)] == [kept]
        assert databases.rows(
            tmp_path, f"SELECT count(*) FROM steps WHERE execution_id = '{old}'"
        ) == [(0,)]


def sqlite_pragma(data_dir: Path, pragma: str) -> int:
    [(value,)] = databases.rows(data_dir, f"PRAGMA {pragma}")
    assert isinstance(value, int)
    return value


def file_size(data_dir: Path) -> int:
    return sum(f.stat().st_size for f in data_dir.glob("solder.db*"))


def checkpoint(data_dir: Path) -> None:
    """Copy the WAL into the database file and empty it. A server's connection reading
    at that moment makes SQLite give up (busy): try again until it is done."""
    deadline = time.monotonic() + TIMEOUT
    while databases.rows(data_dir, "PRAGMA wal_checkpoint(TRUNCATE)")[0][0] != 0:
        assert time.monotonic() < deadline, "the WAL could not be checkpointed"
        time.sleep(0.05)


@pytest.mark.skipif(databases.on_postgres(), reason="a SQLite file's space")
def test_the_space_of_purged_logs_goes_back_to_the_file_system(
    make_server: Callable[..., Server], tmp_path: Path
) -> None:
    server = make_server(data_dir=tmp_path, retention_sweep_seconds=3600)
    with api_client(server) as api:
        user_id, workflow_id = api.install(quick("Bulky"))
        # Random payloads of 120,000 hex digits: the log holds each (the row keeps no
        # copy once the run ends), compressed to no less than 60,000 bytes: 14 pages, so
        # 250 logs are over three times the pages a sweep keeps for reuse.
        ids = [
            api.run(user_id, workflow_id, {"blob": secrets.token_hex(60_000)}) for _ in range(250)
        ]
        wait_until_all_ended(api, workflow_id, len(ids))
    assert sqlite_pragma(tmp_path, "auto_vacuum") == 2, "incremental, from the first table on"
    backdate(tmp_path, ids, 8)
    checkpoint(tmp_path)
    size_before = file_size(tmp_path)
    pages_before = sqlite_pragma(tmp_path, "page_count")

    async def purge_then_reclaim() -> tuple[int, int]:
        db = Database(server.settings.database_url)
        try:
            sweep = Retention(db, server.settings)
            purged = await sweep.purge()
            free = sqlite_pragma(tmp_path, "freelist_count")
            await sweep.sweep()  # as the server's next sweep: nothing to purge, space back
            return purged, free
        finally:
            await db.dispose()

    purged, free_after_purge = asyncio.run(purge_then_reclaim())
    assert purged == 250
    assert free_after_purge > 250 * 14, "the purged logs' pages are free, still in the file"
    assert sqlite_pragma(tmp_path, "freelist_count") <= RESERVE_PAGES
    assert sqlite_pragma(tmp_path, "page_count") <= pages_before - (
        free_after_purge - RESERVE_PAGES
    )
    checkpoint(tmp_path)
    assert file_size(tmp_path) < size_before / 2, "the file shrank"


@pytest.mark.skipif(databases.on_postgres(), reason="SQLite's auto_vacuum")
def test_solder_vacuum_switches_an_older_sqlite_database_to_incremental_vacuum(
    tmp_path: Path,
) -> None:
    env = environment(tmp_path)
    key = solder("keys", "create", "--tenant", "acme", env=env).stdout.splitlines()[-1]
    # As a database made before Solder set auto_vacuum: VACUUM applies the mode asked for.
    with closing(sqlite3.connect(tmp_path / "solder.db", isolation_level=None)) as conn:
        conn.execute("PRAGMA auto_vacuum=NONE")
        conn.execute("VACUUM")
    assert sqlite_pragma(tmp_path, "auto_vacuum") == 0

    assert "run `solder vacuum` once" in cli_ok("retention", "purge", env=env)
    cli_ok("vacuum", env=env)
    assert sqlite_pragma(tmp_path, "auto_vacuum") == 2
    assert "run `solder vacuum`" not in cli_ok("retention", "purge", env=env)
    [(prefix,)] = databases.rows(tmp_path, "SELECT prefix FROM api_keys")
    assert key.startswith(str(prefix)), "the data survived the rewrite"

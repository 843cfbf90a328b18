"""Schedule triggers: Solder runs the workflow at every cron tick, once per tick per user.

The cron expressions have a sixth field, seconds, so that ticks come every second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from solder.schedule import Scheduler
from solder.store.database import Database
from tests.conftest import TIMEOUT, Api, Server, api_client
from tests.test_protocol import assert_error

EVERY_SECOND = "* * * * * *"


def every_second(name: str = "Heartbeat") -> dict[str, Any]:
    """A workflow run every second that outputs the tick it runs for."""
    return {
        "name": name,
        "trigger": {"type": "schedule", "cron": EVERY_SECOND},
        "blocks": [
            {
                "name": "echo",
                "connector": "transform",
                "config": {"expression": "{{ trigger.scheduledAt }}"},
            }
        ],
    }


def ms(timestamp: str) -> int:
    moment = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return round(moment.timestamp() * 1000)


def now() -> int:
    return time.time_ns() // 1_000_000


def scheduled_at(log: dict[str, Any]) -> int:
    """The tick a scheduled run ran for, from its trigger data."""
    return ms(log["results"][0]["data"][0][0]["json"]["scheduledAt"])


def runs(api: Api, workflow_id: str, user_id: str) -> list[dict[str, Any]]:
    """Every log of the user's runs of the workflow, earliest tick first."""
    logs: list[dict[str, Any]] = []
    page = 1
    while batch := api.logs(workflow_id, userId=user_id, limit=30, page=page):
        logs += batch
        page += 1
    return sorted(logs, key=scheduled_at)


def wait_for_runs(
    api: Api,
    workflow_id: str,
    user_id: str,
    enough: Callable[[list[dict[str, Any]]], bool],
) -> list[dict[str, Any]]:
    """The user's runs once `enough` holds for those that have ended."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        logs = runs(api, workflow_id, user_id)
        if enough([log for log in logs if log["stoppedAt"] is not None]):
            return logs
        assert time.monotonic() < deadline, f"too few scheduled runs: {len(logs)}"
        time.sleep(0.05)


def at_least(count: int) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda ended: len(ended) >= count


def test_a_schedule_runs_at_each_tick_for_every_user_who_activated_it(
    make_server: Callable[..., Server],
) -> None:
    with api_client(make_server(schedule_poll_seconds=0.1)) as api:
        ada, bob = api.create_user("ada"), api.create_user("bob")
        workflow_id = api.create_workflow(every_second())
        before_activation = now()
        api.activate(ada, workflow_id)
        api.activate(bob, workflow_id)

        for user_id in (ada, bob):
            logs = wait_for_runs(api, workflow_id, user_id, at_least(3))
            ticks = [scheduled_at(log) for log in logs]
            assert len(ticks) == len(set(ticks)), "one run per tick"
            assert all(tick % 1000 == 0 for tick in ticks), "ticks fall on whole seconds"
            assert min(ticks) > before_activation, "activating does not run it at once"
            for log in logs:
                assert log["userId"] == user_id
                assert log["inputs"][0]["data"] == {}
                if log["stoppedAt"] is not None:
                    assert log["finished"] is True
                    scheduled = log["results"][0]["data"][0][0]["json"]["scheduledAt"]
                    assert log["results"][1]["data"][0][0]["json"] == scheduled
                    assert scheduled.endswith(".000Z")

        refused = api.post("/run/workflow", json={"userId": ada, "workflowId": workflow_id})
        assert "schedule" in assert_error(refused, 400)["message"]


def test_schedulers_sweeping_one_database_at_once_run_each_tick_once(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(schedule_poll_seconds=0.05)
    with api_client(server) as api:
        user_id, workflow_id = api.install(every_second())

        async def sweep_together(seconds: float) -> None:
            # Two more schedulers beside the server's own, each with its own connections to
            # the same database file, as other processes would have; each round, both read
            # the same due tick and race to claim it.
            databases = [Database(server.settings.database_url) for _ in range(2)]
            schedulers = [Scheduler(db, server.settings, lambda: None) for db in databases]
            try:
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    await asyncio.gather(*(scheduler.sweep() for scheduler in schedulers))
                    await asyncio.sleep(0.01)
            finally:
                for db in databases:
                    await db.dispose()

        asyncio.run(sweep_together(3.5))
        swept_until = now()

        logs = wait_for_runs(
            api,
            workflow_id,
            user_id,
            lambda ended: sum(scheduled_at(log) <= swept_until for log in ended) >= 3,
        )
        ticks = [scheduled_at(log) for log in logs]
        assert len(ticks) == len(set(ticks)), "a tick ran more than once"


def test_ticks_missed_while_down_run_once_at_restart(
    make_server: Callable[..., Server], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    first = make_server(data_dir=data_dir, schedule_poll_seconds=0.1)
    with api_client(first) as api:
        user_id, workflow_id = api.install(every_second())
        wait_for_runs(api, workflow_id, user_id, at_least(1))
    first.stop()
    stopped_at = now()
    time.sleep(3.5)  # at least three ticks pass while no server runs
    restarting_at = now()
    second = make_server(data_dir=data_dir, schedule_poll_seconds=0.1)
    started_at = now()

    with api_client(second) as api:
        logs = wait_for_runs(
            api,
            workflow_id,
            user_id,
            lambda ended: sum(scheduled_at(log) > started_at for log in ended) >= 2,
        )
    before = [log for log in logs if scheduled_at(log) < stopped_at]
    after = [log for log in logs if scheduled_at(log) > stopped_at]
    assert before
    assert len(before) + len(after) == len(logs)
    # The restarted server ran the ticks it missed as it started, before it answered
    # requests, as one run: for the latest of them. The earlier ones never run.
    catch_up = after[0]
    assert scheduled_at(catch_up) < started_at
    assert scheduled_at(catch_up) - scheduled_at(before[-1]) >= 3000, "two ticks skipped"
    assert len([log for log in after if scheduled_at(log) < restarting_at]) <= 1
    # Then the schedule goes on as before, one run per tick.
    ticks = [scheduled_at(log) for log in logs]
    assert len(ticks) == len(set(ticks))


def test_an_inactive_installation_does_not_run_and_skips_the_ticks_it_missed(
    make_server: Callable[..., Server],
) -> None:
    with api_client(make_server(schedule_poll_seconds=0.1)) as api:
        ada, bob = api.create_user("ada"), api.create_user("bob")
        workflow_id = api.create_workflow(every_second())
        api.activate(ada, workflow_id)
        api.activate(bob, workflow_id)
        response = api.put("/workflows/deactivate", json={"userId": bob, "workflowId": workflow_id})
        assert response.status_code == 200
        # A tick may have come between activating and deactivating; none after.
        runs_while_active = len(runs(api, workflow_id, bob))
        deactivated_at = now()

        wait_for_runs(
            api,
            workflow_id,
            ada,
            lambda ended: sum(scheduled_at(log) > deactivated_at for log in ended) >= 3,
        )
        assert len(runs(api, workflow_id, bob)) == runs_while_active

        reactivated_at = now()
        api.activate(bob, workflow_id)
        logs = wait_for_runs(api, workflow_id, bob, at_least(runs_while_active + 2))
        resumed = [scheduled_at(log) for log in logs[runs_while_active:]]
        assert min(resumed) > reactivated_at, "ticks missed while inactive never run"

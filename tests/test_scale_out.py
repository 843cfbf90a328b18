"""Scale-out on PostgreSQL, with real processes: API servers and workers apart, a worker
killed mid-run, the database stopped and started under load. Nothing accepted is lost,
nothing runs to its end twice, no step is recorded twice."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import databases
from tests.conftest import TIMEOUT, Api
from tests.pgcluster import PgCluster, pg_cluster  # noqa: F401
from tests.processes import ServeProcess, WorkerProcess, environment, solder
from tests.runs import (
    all_logs,
    assert_each_ran_exactly_once,
    count_workflow,
    echo_n,
    wait_until_all_ended,
)
from tests.upstream import Upstream

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not databases.on_postgres(),
        reason="PostgreSQL only (SOLDER_TEST_DATABASE=postgres): workers and their "
        "heartbeat (SQLite's processes: test_processes.py)",
    ),
]

RUNS = 2000
CALL_SECONDS = 0.1  # how long each run's http block takes upstream


def new_key(env: dict[str, str]) -> dict[str, str]:
    created = solder("keys", "create", "--tenant", "acme", env=env)
    assert created.returncode == 0, created.stderr
    return {"Authorization": f"bearer {created.stdout.strip().splitlines()[-1]}"}


def counts(url: str) -> tuple[int, int]:
    """(ended, all) executions, read straight from the database."""
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE status IN ('succeeded', 'failed', 'canceled')),"
            " count(*) FROM executions"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def wait_for(condition: Any, what: str, timeout: float = 4 * TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.1)


def test_an_api_and_two_workers_lose_nothing_when_a_worker_is_killed(
    tmp_path: Path, upstream: Upstream
) -> None:
    upstream.route("/count", lambda request: echo_n(request, CALL_SECONDS))
    env = environment(
        tmp_path,
        SOLDER_HTTP_ALLOW_PRIVATE_NETWORKS="true",
        SOLDER_WORKER_CONCURRENCY="8",
        SOLDER_WORKER_TIMEOUT_SECONDS="3",
    )
    url = env["SOLDER_DATABASE_URL"]
    headers = new_key(env)
    api_server = ServeProcess(env, tmp_path / "api.log", "--no-worker")
    first = WorkerProcess(env, tmp_path / "worker-1.log")
    second = WorkerProcess(env, tmp_path / "worker-2.log")
    restarted: WorkerProcess | None = None
    try:
        with Api(base_url=api_server.base_url, headers=headers, timeout=TIMEOUT) as api:
            user_id, workflow_id = api.install(count_workflow(upstream))
            with ThreadPoolExecutor(8) as pool:
                ids = pool.map(lambda n: (api.run(user_id, workflow_id, {"n": n}), n), range(RUNS))
                submitting = iter(ids)
                accepted = dict(next(submitting) for _ in range(RUNS // 2))
                # Midway, with a backlog queued, both workers have runs in flight: kill one.
                wait_for(lambda: counts(url)[0] >= RUNS // 5, "a fifth of the runs ended")
                first.kill()
                accepted.update(submitting)
            assert len(accepted) == RUNS
            time.sleep(1)
            restarted = WorkerProcess(env, tmp_path / "worker-1.log")
            wait_for(lambda: counts(url) == (RUNS, RUNS), "every accepted run ended")
            logs = all_logs(api, workflow_id)
        assert len(logs) == RUNS
        assert_each_ran_exactly_once(logs, accepted)
        assert api_server.alive()
        assert second.alive()
    finally:
        for process in (first, second, restarted):
            if process is not None:
                process.terminate()
        api_server.terminate()
    swept = (tmp_path / "worker-2.log").read_text() + (tmp_path / "worker-1.log").read_text()
    assert "crashed with its worker" in swept, "the killed worker's runs were detected"
    # The blocks in flight at the kill ran again (at-least-once); every other block once.
    calls = Counter(int(r.query["n"][0]) for r in upstream.requests)
    assert set(calls) == set(range(RUNS))
    assert sum(calls.values()) <= RUNS + 8, "only the killed worker's 8 slots run twice"


class Load:
    """Submits runs one after another from a thread, recording every answer."""

    def __init__(
        self, api_url: str, headers: dict[str, str], user_id: str, workflow_id: str
    ) -> None:
        self.client = httpx.Client(base_url=api_url, headers=headers, timeout=TIMEOUT)
        self.path = "/2025-09/run/workflow"
        self.body = {"userId": user_id, "workflowId": workflow_id}
        self.accepted: dict[str, int] = {}
        self.answers: list[tuple[int, Any, float]] = []  # status, body, seconds taken
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._submit, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT)
        self.client.close()

    def _submit(self) -> None:
        n = 0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                answer = self.client.post(self.path, json={**self.body, "data": {"n": n}})
            except httpx.TransportError as exc:
                self.answers.append((0, repr(exc), time.monotonic() - started))
                continue
            self.answers.append((answer.status_code, answer.json(), time.monotonic() - started))
            if answer.status_code == 200:
                self.accepted[answer.json()["executionId"]] = n
            n += 1
            time.sleep(0.01)


def test_the_database_stopped_and_started_under_load_loses_no_accepted_run(
    tmp_path: Path,
    upstream: Upstream,
    pg_cluster: PgCluster,  # noqa: F811
) -> None:
    pg_cluster.create_database("solder")
    private_database = pg_cluster.url("solder")
    upstream.route("/count", echo_n)
    env = environment(
        tmp_path,
        SOLDER_DATABASE_URL=private_database,
        SOLDER_HTTP_ALLOW_PRIVATE_NETWORKS="true",
        SOLDER_WORKER_TIMEOUT_SECONDS="3",
    )
    headers = new_key(env)
    api_server = ServeProcess(env, tmp_path / "api.log", "--no-worker")
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        with Api(base_url=api_server.base_url, headers=headers, timeout=TIMEOUT) as api:
            user_id, workflow_id = api.install(count_workflow(upstream))
        with Load(api_server.base_url, headers, user_id, workflow_id) as load:
            wait_for(lambda: len(load.accepted) >= 30, "runs are accepted")
            pg_cluster.stop("fast")
            down, stopped_at = len(load.answers), time.monotonic()
            wait_for(lambda: len(load.answers) >= down + 20, "answers come while it is down")
            # Down for several heartbeats (every 0.5 s here); runs in flight are interrupted.
            time.sleep(max(0.0, 3 - (time.monotonic() - stopped_at)))
            pg_cluster.start()
            back, restarted = len(load.accepted), time.monotonic()
            wait_for(lambda: len(load.accepted) > back, "a run is accepted again")
            # psycopg's pool alone retried with doubling delays: 20 to 60 s here.
            assert time.monotonic() - restarted < 10, "accepted again within seconds"
            wait_for(lambda: len(load.accepted) >= back + 30, "runs are accepted again")
        statuses = Counter(status for status, _, _ in load.answers)
        assert set(statuses) <= {200, 503}, f"only 200 or 503, never a 500 or a hang: {statuses}"
        refused = [(body, seconds) for status, body, seconds in load.answers if status == 503]
        assert refused, "requests while the database is down are refused"
        assert all(set(body) == {"error", "message", "status"} for body, _ in refused), refused[0]
        assert max(seconds for _, _, seconds in load.answers) < 10, "no request hangs"
        # Once the pool knows the server is gone, a request is refused at once, not after
        # the checkout's whole timeout (5 s).
        waits = sorted(seconds for _, seconds in refused)
        assert waits[len(waits) // 2] < 1, f"refused at once: {waits}"

        url = private_database
        wait_for(lambda: counts(url)[0] == counts(url)[1], "every run ended, without a restart")
        with Api(base_url=api_server.base_url, headers=headers, timeout=TIMEOUT) as api:
            logs = all_logs(api, workflow_id)
        assert_each_ran_exactly_once(logs, load.accepted, others=True)
        assert api_server.alive(), "the API was not restarted"
        assert worker.alive(), "the worker was not restarted"
    finally:
        worker.terminate()
        api_server.terminate()


def one_run(api_url: str, headers: dict[str, str], upstream: Upstream) -> tuple[Api, str, str]:
    api = Api(base_url=api_url, headers=headers, timeout=TIMEOUT)
    user_id, workflow_id = api.install(count_workflow(upstream))
    return api, workflow_id, api.run(user_id, workflow_id, {"n": 21})


def test_sigterm_lets_the_block_in_flight_finish_within_the_grace_period(
    tmp_path: Path, upstream: Upstream
) -> None:
    upstream.route("/count", lambda request: echo_n(request, 1.5))
    env = environment(
        tmp_path, SOLDER_HTTP_ALLOW_PRIVATE_NETWORKS="true", SOLDER_SHUTDOWN_GRACE_SECONDS="20"
    )
    headers = new_key(env)
    api_server = ServeProcess(env, tmp_path / "api.log", "--no-worker")
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        api, workflow_id, execution_id = one_run(api_server.base_url, headers, upstream)
        wait_for(lambda: len(upstream.requests) == 1, "the block is in flight", TIMEOUT)
        started = time.monotonic()
        assert worker.terminate() == 0
        assert time.monotonic() - started < 15, "it waited for the block, not the whole grace"
        log = api.wait_for(workflow_id, execution_id)  # ended before the worker exited
        assert log["status"] == "succeeded"
        assert log["results"][2]["data"][0][0]["json"] == 42
        assert len(upstream.requests) == 1, "the block ran once"
        api.close()
    finally:
        worker.kill()
        api_server.terminate()
    assert "worker stopped" in (tmp_path / "worker.log").read_text()


def test_a_run_interrupted_past_the_grace_period_resumes_on_another_worker(
    tmp_path: Path, upstream: Upstream
) -> None:
    upstream.route("/count", echo_n)
    env = environment(
        tmp_path, SOLDER_HTTP_ALLOW_PRIVATE_NETWORKS="true", SOLDER_SHUTDOWN_GRACE_SECONDS="0.5"
    )
    headers = new_key(env)
    api_server = ServeProcess(env, tmp_path / "api.log", "--no-worker")
    first = WorkerProcess(env, tmp_path / "worker-1.log")
    second: WorkerProcess | None = None
    try:
        upstream.hold()
        api, workflow_id, execution_id = one_run(api_server.base_url, headers, upstream)
        wait_for(lambda: len(upstream.requests) == 1, "the block is in flight", TIMEOUT)
        started = time.monotonic()
        assert first.terminate() == 0
        assert time.monotonic() - started < 10, "the grace period bounds the shutdown"
        upstream.release()
        second = WorkerProcess(env, tmp_path / "worker-2.log")
        log = api.wait_for(workflow_id, execution_id)
        assert log["status"] == "succeeded"
        assert_each_ran_exactly_once([log], {execution_id: 21})
        assert len(upstream.requests) == 2, "the interrupted block ran again (at least once)"
        api.close()
    finally:
        upstream.release()
        first.kill()
        if second is not None:
            second.terminate()
        api_server.terminate()


def test_schedules_and_delays_across_two_workers_run_once_each(
    tmp_path: Path, upstream: Upstream
) -> None:
    env = environment(tmp_path, SOLDER_SCHEDULE_POLL_SECONDS="0.1")
    headers = new_key(env)
    api_server = ServeProcess(env, tmp_path / "api.log", "--no-worker")
    workers = [WorkerProcess(env, tmp_path / f"worker-{n}.log") for n in (1, 2)]
    try:
        with Api(base_url=api_server.base_url, headers=headers, timeout=TIMEOUT) as api:
            user_id, ticking = api.install(every_second())
            waiting = api.create_workflow(
                {
                    "name": "Wait",
                    "trigger": {"type": "webhook"},
                    "blocks": [
                        {"name": "wait", "connector": "delay", "config": {"seconds": 1}},
                        {
                            "name": "done",
                            "connector": "transform",
                            "config": {"expression": "{{ 2 }}"},
                        },
                    ],
                }
            )
            api.activate(user_id, waiting)
            runs = {api.run(user_id, waiting, {"n": n}): n for n in range(20)}
            delayed = wait_until_all_ended(api, waiting, len(runs))
            time.sleep(2)  # a few more ticks
            ticked = all_logs(api, ticking)
        ticks = [log["results"][0]["data"][0][0]["json"]["scheduledAt"] for log in ticked]
        assert Counter(log["executionId"] for log in delayed) == Counter(list(runs))
        for log in delayed:
            assert log["status"] == "succeeded"
            assert len({r["connectorId"] for r in log["results"]}) == 3, "each block once"
            assert seconds(log["stoppedAt"]) - seconds(log["startedAt"]) >= 1, "it waited"
        assert len(ticks) >= 3, "the schedule ran"
        assert len(ticks) == len(set(ticks)), "each tick ran once, whichever worker swept"
    finally:
        for worker in workers:
            worker.terminate()
        api_server.terminate()


def every_second() -> dict[str, Any]:
    return {
        "name": "Tick",
        "trigger": {"type": "schedule", "cron": "* * * * * *"},
        "blocks": [
            {"name": "echo", "connector": "transform", "config": {"expression": "{{ 1 }}"}},
        ],
    }


def seconds(timestamp: str) -> float:
    return datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()

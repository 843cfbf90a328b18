"""An accepted run is never lost: a killed server's runs finish, exactly once, after restart."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx

from tests import databases
from tests.conftest import TIMEOUT, Api, Server
from tests.processes import ServeProcess, environment, solder
from tests.runs import (
    assert_each_ran_exactly_once,
    count_workflow,
    echo_n,
    wait_until_all_ended,
)
from tests.upstream import Upstream

RUNS = 40


def test_sigkill_with_runs_queued_and_in_flight_loses_nothing(
    tmp_path: Path, upstream: Upstream
) -> None:
    upstream.route("/count", echo_n)
    env = environment(
        tmp_path, SOLDER_HTTP_ALLOW_PRIVATE_NETWORKS="true", SOLDER_WORKER_CONCURRENCY="4"
    )
    created = solder("keys", "create", "--tenant", "acme", env=env)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    log = tmp_path / "serve.log"

    first = ServeProcess(env, log)
    headers = {"Authorization": f"bearer {key}"}
    with Api(base_url=first.base_url, headers=headers, timeout=TIMEOUT) as api:
        user_id, workflow_id = api.install(count_workflow(upstream))
        upstream.hold()  # the first runs block in their http call; the rest stay queued
        accepted = {api.run(user_id, workflow_id, {"n": n}): n for n in range(RUNS)}
        deadline = time.monotonic() + TIMEOUT
        while len(upstream.requests) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(upstream.requests) == 4, "four runs should be in flight"
    first.kill()
    upstream.release()

    second = ServeProcess(env, log)
    try:
        with Api(base_url=second.base_url, headers=headers, timeout=TIMEOUT) as api:
            logs = wait_until_all_ended(api, workflow_id, RUNS)
            assert_each_ran_exactly_once(logs, accepted)
    finally:
        second.terminate()
    assert "Application shutdown complete" in log.read_text(), "SIGTERM shuts down cleanly"
    # The blocks in flight at the kill ran again (at-least-once); every other block once.
    calls = Counter(int(r.query["n"][0]) for r in upstream.requests)
    assert set(calls) == set(range(RUNS))
    assert sum(calls.values()) <= RUNS + 4


def test_runs_queued_at_shutdown_finish_after_restart(
    make_server: Callable[..., Server], upstream: Upstream, tmp_path: Path
) -> None:
    upstream.route("/count", echo_n)
    data_dir = tmp_path / "shared"
    first = make_server(data_dir=data_dir, worker_concurrency=1, shutdown_grace_seconds=0.2)
    key = first.new_key("acme")
    client = httpx.Client(headers={"Authorization": f"bearer {key}"}, timeout=TIMEOUT)
    with Api(base_url=first.base_url, headers=client.headers, timeout=TIMEOUT) as api:
        user_id, workflow_id = api.install(count_workflow(upstream))
        upstream.hold()
        accepted = {api.run(user_id, workflow_id, {"n": n}): n for n in range(5)}
    first.stop()  # the grace period ends with a run in flight and four queued
    upstream.release()

    second = make_server(data_dir=data_dir)
    with Api(base_url=second.base_url, headers=client.headers, timeout=TIMEOUT) as api:
        logs = wait_until_all_ended(api, workflow_id, 5)
        assert_each_ran_exactly_once(logs, accepted)


def test_a_worker_that_lost_its_execution_to_another_writes_nothing_more(
    server: Server, api: Api, upstream: Upstream
) -> None:
    upstream.route("/count", echo_n)
    user_id, workflow_id = api.install(count_workflow(upstream))
    upstream.hold()
    execution_id = api.run(user_id, workflow_id, {"n": 1})
    deadline = time.monotonic() + TIMEOUT
    while not upstream.requests and time.monotonic() < deadline:
        time.sleep(0.02)
    # As when a worker is presumed dead mid-block: another claims the execution.
    data_dir = server.settings.data_dir
    databases.execute(
        data_dir, f"UPDATE executions SET lease = 'other' WHERE id = '{execution_id}'"
    )
    upstream.release()
    time.sleep(1.5)  # the first worker's block ends, and it tries to record it
    steps = databases.rows(data_dir, f"SELECT seq FROM steps WHERE execution_id = '{execution_id}'")
    assert steps == [], "the step of the lost lease was refused"
    status = databases.rows(data_dir, f"SELECT status FROM executions WHERE id = '{execution_id}'")
    assert status == [("running",)], "and it did not end it either"

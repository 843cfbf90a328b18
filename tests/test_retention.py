"""Logs are purged once past the retention period; running executions never are."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tests.conftest import TIMEOUT, Server, api_client
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

"""A workflow that counts, and the checks that each accepted run of it ran exactly once.

The durability and scale-out tests share them: runs call a loopback upstream with their
`n` and double what it answers, so a log shows whether each block ran, and ran once.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from tests.conftest import TIMEOUT, Api
from tests.upstream import Reply, Upstream


def count_workflow(upstream: Upstream) -> dict[str, Any]:
    return {
        "name": "Count",
        "trigger": {"type": "webhook"},
        "blocks": [
            {
                "name": "call",
                "connector": "http",
                "config": {"url": f"{upstream.base_url}/count", "query": {"n": "{{ trigger.n }}"}},
            },
            {
                "name": "double",
                "connector": "transform",
                "config": {"expression": "{{ blocks.call.n * 2 }}"},
            },
        ],
    }


def echo_n(request: Any, delay: float = 0.0) -> Reply:
    """The upstream's answer to a counting run: its `n`, after `delay` seconds."""
    return Reply(200, {"n": int(request.query["n"][0])}, delay=delay)


def all_logs(api: Api, workflow_id: str) -> list[dict[str, Any]]:
    logs: list[dict[str, Any]] = []
    page = 1
    while batch := api.logs(workflow_id, limit=30, page=page):
        logs += batch
        page += 1
    return logs


def wait_until_all_ended(
    api: Api, workflow_id: str, count: int, timeout: float = 2 * TIMEOUT
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = all_logs(api, workflow_id)
        if len(logs) >= count and all(log["stoppedAt"] is not None for log in logs):
            return logs
        time.sleep(0.2)
    raise AssertionError(f"{count} accepted runs did not all end within {timeout} s")


def assert_each_ran_exactly_once(
    logs: list[dict[str, Any]], accepted: dict[str, int], *, others: bool = False
) -> None:
    """Each accepted run (execution id: its `n`) has one log, succeeded, each block once.

    With `others`, logs of runs the client never saw accepted may be there too (a 503
    whose transaction had in fact committed); they must be whole all the same.
    """
    ran = Counter(log["executionId"] for log in logs)
    assert not set(accepted) - set(ran), "accepted runs were lost"
    assert max(ran.values(), default=1) == 1, "an execution is listed twice"
    if not others:
        assert set(ran) == set(accepted), "runs nobody asked for"
    for log in logs:
        assert log["status"] == "succeeded", log
        assert log["finished"] is True, log
        ids = [result["connectorId"] for result in log["results"]]
        assert len(ids) == 3, f"steps missing or recorded twice: {ids}"
        assert len(set(ids)) == 3, f"steps recorded twice: {ids}"
        if log["executionId"] in accepted:
            assert log["results"][2]["data"][0][0]["json"] == 2 * accepted[log["executionId"]]

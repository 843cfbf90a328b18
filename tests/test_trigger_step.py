"""An execution's first result is its trigger's, from the moment it is queued to its end.

Its step is not stored (the execution's row holds the trigger until the end): the log
shows it, with one item id, whenever it is read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests import databases
from tests.conftest import TIMEOUT, Api, Server, api_client
from tests.runs import count_workflow, echo_n
from tests.upstream import Upstream


@pytest.fixture
def one_worker(make_server: Callable[..., Server]) -> Server:
    """A server that runs one execution at a time: the next waits, queued."""
    return make_server(worker_concurrency=1)


@pytest.fixture
def api(one_worker: Server) -> Iterator[Api]:
    with api_client(one_worker) as client:
        yield client


def the_log(api: Api, workflow_id: str, execution_id: str) -> dict[str, Any]:
    [log] = [log for log in api.logs(workflow_id) if log["executionId"] == execution_id]
    return log


def stored_steps(server: Server, execution_id: str) -> list[tuple[Any, ...]]:
    return databases.rows(
        server.settings.data_dir,
        f"SELECT seq FROM steps WHERE execution_id = '{execution_id}' ORDER BY seq",
    )


def queued_behind_a_held_run(
    api: Api, upstream: Upstream, user_id: str, workflow_id: str, data: dict[str, Any]
) -> str:
    """A run queued while the one worker waits on the held upstream: its execution id."""
    upstream.hold()
    api.run(user_id, workflow_id, {"n": 1})
    deadline = time.monotonic() + TIMEOUT
    while not upstream.requests and time.monotonic() < deadline:
        time.sleep(0.02)
    assert upstream.requests, "the first run did not call the upstream"
    return api.run(user_id, workflow_id, data)


def test_a_queued_execution_shows_its_trigger_with_one_item_id_to_its_end(
    one_worker: Server, api: Api, upstream: Upstream
) -> None:
    upstream.route("/count", echo_n)
    user_id, workflow_id = api.install(count_workflow(upstream))
    trigger_id = api.get(f"/workflows/{workflow_id}").json()["data"]["blocks"][0]["id"]
    execution_id = queued_behind_a_held_run(api, upstream, user_id, workflow_id, {"n": 4})

    queued = the_log(api, workflow_id, execution_id)
    assert queued["status"] == "queued"
    [result] = queued["results"]
    assert result["connectorId"] == trigger_id
    assert result["startedAt"] == queued["startedAt"]
    [[item]] = result["data"]
    assert item["json"] == {"n": 4}
    assert queued["inputs"] == [{"connectorId": trigger_id, "data": {}}]
    assert the_log(api, workflow_id, execution_id) == queued, "the same log at every read"
    other = api.run(user_id, workflow_id, {"n": 4})
    other_item = the_log(api, workflow_id, other)["results"][0]["data"][0][0]
    assert other_item["id"] != item["id"], "each execution's trigger item has its own id"
    assert stored_steps(one_worker, execution_id) == [], "the row holds the trigger"

    upstream.release()
    done = api.wait_for(workflow_id, execution_id)
    assert done["status"] == "succeeded"
    assert done["results"][0] == result, "the finished log shows the trigger as queued"
    assert [r["data"][0][0]["json"] for r in done["results"]] == [{"n": 4}, {"n": 4}, 8]


def test_a_trigger_step_stored_by_an_earlier_solder_is_the_one_shown(
    one_worker: Server, api: Api, upstream: Upstream
) -> None:
    upstream.route("/count", echo_n)
    user_id, workflow_id = api.install(count_workflow(upstream))
    execution_id = queued_behind_a_held_run(api, upstream, user_id, workflow_id, {"n": 2})
    [(tenant_id, started_at, trigger_id)] = databases.rows(
        one_worker.settings.data_dir,
        f"SELECT tenant_id, started_at, trigger_id FROM executions WHERE id = '{execution_id}'",
    )
    assert isinstance(started_at, int)
    item = "0b7e4f4e-8a51-4cf2-9a7e-5d8f1c2b3a40"
    databases.execute(  # as Solder stored a queued execution's trigger before
        one_worker.settings.data_dir,
        "INSERT INTO steps (tenant_id, execution_id, seq, connector_id, block_name,"
        " started_at, stopped_at, data, inputs, app_actions) VALUES"
        f" ('{tenant_id}', '{execution_id}', 0, '{trigger_id}', 'trigger', {started_at},"
        f""" {started_at + 1}, '[[{{"json":{{"n":2}},"id":"{item}"}}]]', '{{}}', 0)""",
    )

    [result] = the_log(api, workflow_id, execution_id)["results"]
    assert result["data"] == [[{"json": {"n": 2}, "id": item}]]

    upstream.release()
    done = api.wait_for(workflow_id, execution_id)
    assert done["status"] == "succeeded"
    assert done["results"][0] == result
    assert [r["data"][0][0]["json"] for r in done["results"]] == [{"n": 2}, {"n": 2}, 4]
    assert stored_steps(one_worker, execution_id) == [], "its steps went with its end"

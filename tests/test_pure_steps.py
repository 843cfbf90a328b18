"""Steps of pure blocks (`transform`, `branch`, `loop`) are written with the next step
written, or with the execution's end: what the log shows must not change for it. A
call's step is written before the next block starts, or with the end when it is last.

That they show in a live log while a block that calls out runs is
test_logs_pagination's `test_running_execution_shows_finished_blocks_and_no_stop`.
"""

from __future__ import annotations

from typing import Any

import pytest

from solder import engine
from solder.store import queue
from tests import databases
from tests.conftest import Api, Server
from tests.runs import echo_n
from tests.upstream import Upstream

ITEMS = 2_500  # more than the engine keeps unwritten (1,000): some are written mid-run


def test_a_long_chain_of_pure_blocks_logs_every_step_once_in_order(api: Api) -> None:
    user_id, workflow_id = api.install(
        {
            "name": "long loop",
            "trigger": {"type": "webhook"},
            "blocks": [
                {
                    "name": "each",
                    "connector": "loop",
                    "config": {"over": "{{ trigger.items }}"},
                    "blocks": [
                        {
                            "name": "double",
                            "connector": "transform",
                            "config": {"expression": "{{ item * 2 }}"},
                        }
                    ],
                },
                {
                    "name": "total",
                    "connector": "transform",
                    "config": {"expression": "{{ $sum(blocks.each) }}"},
                },
            ],
        }
    )
    execution_id = api.run(user_id, workflow_id, {"items": list(range(ITEMS))})

    log = api.wait_for(workflow_id, execution_id, timeout=60)

    assert log["status"] == "succeeded"
    _trigger, loop, *body, total = log["results"]
    assert len(body) == ITEMS, "every iteration's step, written mid-run or at the end"
    # The loop's step started first although it was recorded after its body.
    assert loop["data"] == [[{"json": i * 2, "id": loop["data"][0][i]["id"]} for i in range(ITEMS)]]
    assert [step["iteration"] for step in body] == list(range(ITEMS))
    assert [step["data"][0][0]["json"] for step in body] == [i * 2 for i in range(ITEMS)]
    assert total["data"][0][0]["json"] == ITEMS * (ITEMS - 1)
    started = [step["startedAt"] for step in log["results"][1:]]
    assert started == sorted(started)


def test_an_internal_error_keeps_the_steps_of_pure_blocks_before_it(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = engine._block_value

    def fails_on_boom(outputs: Any) -> Any:  # a fault in the engine, after `b`'s step
        value = real(outputs)
        if value == "boom":
            raise RuntimeError("injected")
        return value

    monkeypatch.setattr(engine, "_block_value", fails_on_boom)
    user_id, workflow_id = api.install(
        {
            "name": "fault",
            "trigger": {"type": "webhook"},
            "blocks": [
                {"name": "a", "connector": "transform", "config": {"expression": "{{ 1 }}"}},
                {"name": "b", "connector": "transform", "config": {"expression": "{{ 'boom' }}"}},
                {"name": "c", "connector": "transform", "config": {"expression": "{{ 3 }}"}},
            ],
        }
    )
    execution_id = api.run(user_id, workflow_id)

    log = api.wait_for(workflow_id, execution_id)

    assert log["status"] == "failed"
    assert [result["data"][0][0]["json"] for result in log["results"][1:]] == [1, "boom"]


def test_a_calls_step_is_written_before_the_next_block_and_the_last_with_the_end(
    server: Server, api: Api, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream.route("/count", echo_n)
    data_dir = server.settings.data_dir
    seen_by_pure_block: list[list[object]] = []
    real_value = engine._block_value

    def look_at_the_steps(outputs: Any) -> Any:
        value = real_value(outputs)
        if value == "look":  # while the pure block after the first call runs
            steps = databases.rows(data_dir, "SELECT seq FROM steps ORDER BY seq")
            seen_by_pure_block.append([seq for (seq,) in steps])
        return value

    written_one_by_one: list[int] = []
    real_record = queue.record_step

    async def record_step(conn: Any, lease: str, **step: Any) -> bool:
        written_one_by_one.append(step["seq"])
        return await real_record(conn, lease, **step)

    monkeypatch.setattr(engine, "_block_value", look_at_the_steps)
    monkeypatch.setattr(queue, "record_step", record_step)
    call = {"connector": "http", "config": {"url": f"{upstream.base_url}/count?n=1"}}
    user_id, workflow_id = api.install(
        {
            "name": "calls",
            "trigger": {"type": "webhook"},
            "blocks": [
                {"name": "first", **call},
                {"name": "look", "connector": "transform", "config": {"expression": "look"}},
                {"name": "last", **call},
            ],
        }
    )
    execution_id = api.run(user_id, workflow_id)

    log = api.wait_for(workflow_id, execution_id)

    assert log["status"] == "succeeded"
    assert seen_by_pure_block == [[1]], "the first call's step was durable before it ran"
    assert [result["data"][0][0]["json"] for result in log["results"][1:]] == [
        {"n": 1},
        "look",
        {"n": 1},
    ]
    assert len(upstream.requests) == 2
    assert written_one_by_one == [1], "the pure block's and the last call's went with the end"
    assert databases.rows(data_dir, "SELECT seq FROM steps") == [], "and the steps were dropped"

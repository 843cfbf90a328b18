"""Steps of pure blocks (`transform`, `branch`, `loop`) are written with the next step
written, or with the execution's end: what the log shows must not change for it.

That they show in a live log before a block that calls out starts is
test_logs_pagination's `test_running_execution_shows_finished_blocks_and_no_stop`.
"""

from __future__ import annotations

from typing import Any

import pytest

from solder import engine
from tests.conftest import Api

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

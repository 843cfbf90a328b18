"""branch, loop, delay and retries, as the execution log shows them."""

from __future__ import annotations

import email.utils
import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TIMEOUT, Api, Server, api_client
from tests.processes import ServeProcess, environment, solder
from tests.upstream import Reply, Request, Upstream


def transform(name: str, expression: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "connector": "transform", "config": {"expression": expression}, **extra}


def workflow(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"name": "flow", "trigger": {"type": "webhook"}, "blocks": list(blocks)}


def by_name(log: dict[str, Any], definition: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The log's results grouped by block name, in log order."""
    names: dict[str, str] = {}

    def collect(blocks: list[dict[str, Any]]) -> None:
        for block in blocks:
            names[block["id"]] = block["name"]
            collect(block.get("blocks", []))
            for path in block.get("config", {}).get("paths", []):
                collect(path.get("blocks", []))
            collect(block.get("config", {}).get("else", []))

    collect(definition["blocks"])
    grouped: dict[str, list[dict[str, Any]]] = {}
    for result in log["results"][1:]:
        grouped.setdefault(names[result["connectorId"]], []).append(result)
    return grouped


BRANCH = workflow(
    transform("score", "{{ trigger.score }}"),
    {
        "name": "route",
        "connector": "branch",
        "config": {
            "paths": [
                {"when": "{{ blocks.score >= 90 }}", "blocks": [transform("vip", "{{ 'vip' }}")]},
                {"when": "{{ blocks.score >= 50 }}", "blocks": [transform("std", "{{ 'std' }}")]},
            ],
            "else": [transform("low", "{{ 'low' }}")],
        },
    },
    transform("after", "{{ blocks.vip & '/' & blocks.std & '/' & blocks.low }}"),
)


@pytest.mark.parametrize(
    ("score", "taken", "ran"), [(95, 0, "vip"), (60, 1, "std"), (10, 2, "low")]
)
def test_a_branch_takes_the_first_true_path_or_else(
    api: Api, score: int, taken: int, ran: str
) -> None:
    user_id, workflow_id = api.install(BRANCH)
    definition = api.get(f"/workflows/{workflow_id}").json()["data"]["definition"]

    log = api.wait_for(workflow_id, api.run(user_id, workflow_id, {"score": score}))

    assert log["finished"] is True
    results = by_name(log, definition)
    assert list(results) == ["score", "route", ran, "after"]
    route = results["route"][0]
    assert len(route["data"]) == 3
    assert [bool(output) for output in route["data"]] == [i == taken for i in range(3)]
    assert route["data"][taken][0]["json"] == score, "the branch passes its item on"
    expected = "/".join(n if n == ran else "" for n in ("vip", "std", "low"))
    assert results["after"][0]["data"][0][0]["json"] == expected, "blocks not run are empty"


def test_a_loop_runs_its_blocks_per_item_and_goes_on_past_a_failing_one(
    api: Api, upstream: Upstream
) -> None:
    upstream.route(
        "/contacts",
        lambda r: Reply(500, {}) if r.query["n"] == ["2"] else Reply(200, {"n": r.query["n"][0]}),
    )
    definition = workflow(
        {
            "name": "each",
            "connector": "loop",
            "config": {"over": "{{ trigger.ids }}"},
            "blocks": [
                {
                    "name": "push",
                    "connector": "http",
                    "config": {
                        "url": f"{upstream.base_url}/contacts",
                        "query": {"n": "{{ item }}"},
                    },
                    "onError": "continue",
                },
                transform("tag", "{{ {'id': item, 'pushed': blocks.push} }}"),
            ],
        },
        transform("count", "{{ $count(blocks.each) }}"),
    )
    user_id, workflow_id = api.install(definition)
    stored = api.get(f"/workflows/{workflow_id}").json()["data"]["definition"]

    log = api.wait_for(workflow_id, api.run(user_id, workflow_id, {"ids": [1, 2, 3]}))

    assert log["finished"] is True
    results = by_name(log, stored)
    assert [r["iteration"] for r in results["push"]] == [0, 1, 2]
    assert [r["iteration"] for r in results["tag"]] == [0, 1, 2]
    ordered = [r for r in log["results"] if "iteration" in r]
    assert [(r["iteration"], r["connectorId"]) for r in ordered] == [
        (i, stored["blocks"][0]["blocks"][b]["id"]) for i in range(3) for b in range(2)
    ], "each iteration's steps in the order they ran"
    failed = results["push"][1]
    assert "HTTP 500" in failed["error"]["message"]
    loop_items = [item["json"] for item in results["each"][0]["data"][0]]
    assert [item["id"] for item in loop_items] == [1, 2, 3]
    assert "error" in loop_items[1]["pushed"]
    assert loop_items[2]["pushed"] == {"n": "3"}
    assert results["count"][0]["data"][0][0]["json"] == 3
    assert [r.query["n"] for r in upstream.requests] == [["1"], ["2"], ["3"]]


def test_retries_are_visible_in_the_log(api: Api, upstream: Upstream) -> None:
    calls: list[Request] = []

    def flaky(request: Request) -> Reply:
        calls.append(request)
        return Reply(503, {"busy": True}) if len(calls) < 3 else Reply(200, {"ok": True})

    upstream.route("/flaky", flaky)
    definition = workflow(
        {
            "name": "call",
            "connector": "http",
            "config": {"url": f"{upstream.base_url}/flaky"},
            "retry": {"attempts": 3, "backoff": "exponential", "delayMs": 200},
        }
    )
    user_id, workflow_id = api.install(definition)

    log = api.wait_for(workflow_id, api.run(user_id, workflow_id))

    call = log["results"][1]
    assert log["finished"] is True
    assert call["attempts"] == 3
    assert "HTTP 503" in call["lastError"]
    assert call["data"][0][0]["json"] == {"ok": True}
    gaps = [b.at - a.at for a, b in itertools.pairwise(calls)]
    assert gaps[1] > gaps[0], "exponential backoff"


def test_retry_after_is_honoured(api: Api, upstream: Upstream) -> None:
    calls: list[Request] = []

    def limited(request: Request) -> Reply:
        calls.append(request)
        return Reply(429, {}, {"Retry-After": "1"}) if len(calls) == 1 else Reply(200, {})

    upstream.route("/limited", limited)
    retry = {"attempts": 2, "backoff": "fixed", "delayMs": 10}
    definition = workflow(
        {
            "name": "call",
            "connector": "http",
            "config": {"url": f"{upstream.base_url}/limited"},
            "retry": retry,
        }
    )
    user_id, workflow_id = api.install(definition)
    log = api.wait_for(workflow_id, api.run(user_id, workflow_id))
    assert log["finished"] is True
    assert calls[1].at - calls[0].at >= 0.9


def test_retry_after_as_an_http_date_is_honoured(api: Api, upstream: Upstream) -> None:
    calls: list[Request] = []

    def unavailable(request: Request) -> Reply:
        calls.append(request)
        if len(calls) > 1:
            return Reply(200, {})
        # Whole seconds only: three from now is at least two after the truncation.
        return Reply(503, {}, {"Retry-After": email.utils.formatdate(time.time() + 3, usegmt=True)})

    upstream.route("/unavailable", unavailable)
    definition = workflow(
        {
            "name": "call",
            "connector": "http",
            "config": {"url": f"{upstream.base_url}/unavailable"},
            "retry": {"attempts": 2, "backoff": "fixed", "delayMs": 10},
        }
    )
    user_id, workflow_id = api.install(definition)
    log = api.wait_for(workflow_id, api.run(user_id, workflow_id))
    assert log["finished"] is True
    assert calls[1].at - calls[0].at >= 1.5


def test_a_delay_holds_no_worker(make_server: Callable[..., Server]) -> None:
    server = make_server(worker_concurrency=1)
    slow = workflow(
        {"name": "wait", "connector": "delay", "config": {"seconds": 2}},
        transform("done", "{{ 1 }}"),
    )
    with api_client(server) as api:
        user_id, waiting = api.install(slow)
        quick = api.create_workflow({**workflow(transform("t", "{{ 2 }}")), "name": "quick"})
        api.activate(user_id, quick)
        delayed = api.run(user_id, waiting)
        time.sleep(0.3)
        during = api.wait_for(quick, api.run(user_id, quick))
        assert during["finished"] is True, "the only worker was free during the delay"
        log = api.wait_for(waiting, delayed)
    wait = log["results"][1]
    assert log["finished"] is True
    assert during["stoppedAt"] < wait["stoppedAt"]
    assert _ms(wait["stoppedAt"]) - _ms(wait["startedAt"]) >= 2000


def test_a_delay_survives_a_server_kill_and_resumes_on_time(
    tmp_path: Path, upstream: Upstream
) -> None:
    upstream.route("/after", Reply(200, {}))
    env = environment(tmp_path, SOLDER_HTTP_ALLOW_PRIVATE_NETWORKS="true")
    key = solder("keys", "create", "--tenant", "acme", env=env).stdout.splitlines()[-1]
    headers = {"Authorization": f"bearer {key}"}
    definition = workflow(
        {"name": "wait", "connector": "delay", "config": {"seconds": "{{ trigger.seconds }}"}},
        {"name": "ping", "connector": "http", "config": {"url": f"{upstream.base_url}/after"}},
    )
    log_file = tmp_path / "serve.log"
    first = ServeProcess(env, log_file)
    with Api(base_url=first.base_url, headers=headers, timeout=TIMEOUT) as api:
        user_id, workflow_id = api.install(definition)
        accepted = time.time()
        execution_id = api.run(user_id, workflow_id, {"seconds": 3})
        time.sleep(0.5)
        [waiting] = api.logs(workflow_id)
        assert waiting["stoppedAt"] is None
    first.kill()
    assert upstream.requests == []

    second = ServeProcess(env, log_file)
    try:
        with Api(base_url=second.base_url, headers=headers, timeout=TIMEOUT) as api:
            log = api.wait_for(workflow_id, execution_id)
    finally:
        second.terminate()
    assert log["finished"] is True
    assert len(upstream.requests) == 1
    assert upstream.requests[0].at - accepted >= 3, "not before the delay is over"
    assert upstream.requests[0].at - accepted < 3 + 5, "on time, not at some later poll"
    assert [r["connectorId"] for r in log["results"]].count(log["results"][1]["connectorId"]) == 1


def test_a_rerun_runs_the_version_of_the_original(api: Api) -> None:
    user_id, workflow_id = api.install(workflow(transform("v", "{{ 'one' }}")))
    original = api.run(user_id, workflow_id)
    api.wait_for(workflow_id, original)
    api.put(f"/workflows/{workflow_id}", json=workflow(transform("v", "{{ 'two' }}")))
    api.put(f"/workflows/{workflow_id}/upgrade", params={"userId": user_id})

    rerun = api.post(f"/workflows/{workflow_id}/rerun/{original}").json()["executionId"]
    fresh = api.run(user_id, workflow_id)

    again = api.wait_for(workflow_id, rerun)
    assert again["workflowVersion"] == 1
    assert again["results"][1]["data"][0][0]["json"] == "one"
    assert api.wait_for(workflow_id, fresh)["results"][1]["data"][0][0]["json"] == "two"


@pytest.mark.parametrize(
    ("block", "path"),
    [
        ({"name": "b", "connector": "branch", "config": {"paths": []}}, "blocks[0].config.paths"),
        (
            {"name": "b", "connector": "branch", "config": {"paths": [{"blocks": []}]}},
            "blocks[0].config.paths[0].when",
        ),
        (
            {
                "name": "b",
                "connector": "branch",
                "config": {
                    "paths": [{"when": "{{ true }}", "blocks": [transform("x", "{{ foo[ }}")]}]
                },
            },
            "blocks[0].config.paths[0].blocks[0].config.expression",
        ),
        (
            {
                "name": "b",
                "connector": "branch",
                "config": {
                    "paths": [{"when": "{{ true }}"}],
                    "else": [{"name": "e", "connector": "nope"}],
                },
            },
            "blocks[0].config.else[0].connector",
        ),
        ({"name": "l", "connector": "loop", "config": {"over": "{{ [1] }}"}}, "blocks[0].blocks"),
        (
            {"name": "l", "connector": "loop", "config": {}, "blocks": [transform("x", "{{ 1 }}")]},
            "blocks[0].config.over",
        ),
        (
            {
                "name": "l",
                "connector": "loop",
                "config": {"over": "{{ [1] }}"},
                "blocks": [transform("l", "{{ 1 }}")],
            },
            "blocks[0].blocks[0].name",
        ),
        (
            {"name": "t", "connector": "transform", "config": {"expression": 1}, "blocks": []},
            "blocks[0].blocks",
        ),
        (
            {"name": "d", "connector": "delay", "config": {"seconds": -1}},
            "blocks[0].config.seconds",
        ),
        ({"name": "d", "connector": "delay", "config": {}}, "blocks[0].config.seconds"),
        ({"name": "item", "connector": "delay", "config": {"seconds": 1}}, "blocks[0].name"),
    ],
)
def test_new_fields_are_validated_with_their_paths(
    api: Api, block: dict[str, Any], path: str
) -> None:
    response = api.post("/workflows", json=workflow(block))
    assert response.status_code == 400, response.text
    assert path in [problem["path"] for problem in response.json()["errors"]]


def test_a_path_block_cannot_use_a_sibling_paths_block(api: Api) -> None:
    branch = {
        "name": "b",
        "connector": "branch",
        "config": {
            "paths": [{"when": "{{ true }}", "blocks": [transform("one", "{{ 1 }}")]}],
            "else": [transform("two", "{{ blocks.one }}")],
        },
    }
    response = api.post("/workflows", json=workflow(branch))
    assert response.status_code == 400
    assert response.json()["errors"][0]["path"] == "blocks[0].config.else[0].config.expression"


def _ms(stamp: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000)

"""GET /workflows/{id}/logs: paging, ordering, the userId filter, bad parameters, live logs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from solder import executions
from solder.dictionaries import Dictionaries
from solder.store.database import Database
from solder.store.prepared import DriverConnection, Reader
from tests import databases
from tests.conftest import Api, Server, api_client
from tests.test_protocol import MISSING_ID, assert_error
from tests.upstream import Reply, Upstream

RUNS = 25


def echo_workflow(name: str = "echo") -> dict[str, Any]:
    return {
        "name": name,
        "trigger": {"type": "webhook"},
        "blocks": [
            {
                "name": "double",
                "connector": "transform",
                "config": {"expression": "{{ trigger.n * 2 }}"},
            }
        ],
    }


def run_all(api: Api, user_id: str, workflow_id: str, count: int) -> list[str]:
    """Run the workflow `count` times (payload {"n": i}) and wait until every run has ended."""
    ids = [api.run(user_id, workflow_id, {"n": n}) for n in range(count)]
    for execution_id in ids:
        assert api.wait_for(workflow_id, execution_id)["finished"] is True
    return ids


def ids_of(logs: list[dict[str, Any]]) -> list[str]:
    return [log["executionId"] for log in logs]


def payload_n(log: dict[str, Any]) -> int:
    n: int = log["results"][0]["data"][0][0]["json"]["n"]
    return n


def assert_run_order(logs: list[dict[str, Any]]) -> None:
    """The logs of all RUNS runs, newest first, their startedAt in the order they were run."""
    started = [log["startedAt"] for log in logs]
    assert started == sorted(started, reverse=True)
    # Runs started one after the other: a later run never has an earlier startedAt
    # (runs within the same millisecond may come in either order).
    by_time = sorted(((log["startedAt"], payload_n(log)) for log in logs), reverse=True)
    assert [n for _, n in by_time] == list(range(RUNS - 1, -1, -1))


@pytest.fixture
def history(api: Api) -> tuple[str, list[str]]:
    """A workflow with RUNS ended executions of one user; their ids in the order they ran."""
    user_id, workflow_id = api.install(echo_workflow())
    return workflow_id, run_all(api, user_id, workflow_id, RUNS)


def test_default_is_ten_newest_first(api: Api, history: tuple[str, list[str]]) -> None:
    workflow_id, ids = history
    logs = api.logs(workflow_id)
    assert len(logs) == 10
    started = [log["startedAt"] for log in logs]
    assert started == sorted(started, reverse=True)
    assert set(ids_of(logs)) <= set(ids)
    rest = api.logs(workflow_id, page=2) + api.logs(workflow_id, page=3)
    assert min(started) >= max(log["startedAt"] for log in rest)
    assert_run_order(logs + rest)
    for log in logs:
        assert log["results"][1]["data"][0][0]["json"] == payload_n(log) * 2


def test_pages_have_the_right_sizes_and_then_end(api: Api, history: tuple[str, list[str]]) -> None:
    workflow_id, _ = history
    sizes = [len(api.logs(workflow_id, page=page)) for page in (1, 2, 3, 4, 5)]
    assert sizes == [10, 10, 5, 0, 0]
    response = api.get(f"/workflows/{workflow_id}/logs", params={"page": 4})
    assert response.json() == {"data": [], "nextCursor": None}
    assert [len(api.logs(workflow_id, page=p, limit=30)) for p in (1, 2)] == [25, 0]
    assert [len(api.logs(workflow_id, page=p, limit=7)) for p in (1, 2, 3, 4)] == [7, 7, 7, 4]


@pytest.mark.parametrize("order", ["desc", "asc"])
@pytest.mark.parametrize("limit", [1, 7, 10, 30])
def test_pages_neither_overlap_nor_leave_gaps(
    api: Api, history: tuple[str, list[str]], order: str, limit: int
) -> None:
    workflow_id, ids = history
    seen: list[str] = []
    page = 1
    while batch := api.logs(workflow_id, page=page, limit=limit, order=order):
        seen += ids_of(batch)
        page += 1
    assert len(seen) == len(set(seen)) == RUNS
    assert set(seen) == set(ids)
    assert page == -(-RUNS // limit) + 1
    whole = ids_of(api.logs(workflow_id, limit=30, order=order))
    assert seen == whole


def test_asc_is_the_reverse_of_desc(api: Api, history: tuple[str, list[str]]) -> None:
    workflow_id, ids = history
    desc = ids_of(api.logs(workflow_id, limit=30, order="desc"))
    asc = ids_of(api.logs(workflow_id, limit=30, order="asc"))
    assert asc == list(reversed(desc))
    assert sorted(asc) == sorted(ids)
    assert_run_order(api.logs(workflow_id, limit=30))
    assert ids_of(api.logs(workflow_id, order="asc", page=3)) == asc[20:]
    assert ids_of(api.logs(workflow_id, limit=30)) == desc


def test_page_size_and_sort_order_are_aliases(api: Api, history: tuple[str, list[str]]) -> None:
    workflow_id, _ = history
    assert ids_of(api.logs(workflow_id, pageSize=4)) == ids_of(api.logs(workflow_id, limit=4))
    assert len(api.logs(workflow_id, pageSize=30)) == RUNS
    asc = ids_of(api.logs(workflow_id, limit=30, order="asc"))
    assert ids_of(api.logs(workflow_id, limit=30, sortOrder="asc")) == asc
    assert ids_of(api.logs(workflow_id, pageSize=5, sortOrder="asc", page=2)) == asc[5:10]
    desc = ids_of(api.logs(workflow_id, limit=30, sortOrder="desc"))
    assert desc == list(reversed(asc))


def test_user_filter_by_id_and_by_username(api: Api) -> None:
    workflow_id = api.create_workflow(echo_workflow())
    ada, bob = api.create_user("ada"), api.create_user("bob")
    for user_id in (ada, bob):
        api.activate(user_id, workflow_id)
    ada_runs = run_all(api, ada, workflow_id, 3)
    bob_runs = run_all(api, bob, workflow_id, 2)

    assert sorted(ids_of(api.logs(workflow_id, userId=ada))) == sorted(ada_runs)
    assert sorted(ids_of(api.logs(workflow_id, userId="ada"))) == sorted(ada_runs)
    assert sorted(ids_of(api.logs(workflow_id, userId=bob))) == sorted(bob_runs)
    assert sorted(ids_of(api.logs(workflow_id, userId="bob"))) == sorted(bob_runs)
    everyone = ids_of(api.logs(workflow_id))
    assert sorted(everyone) == sorted(ada_runs + bob_runs)
    assert ids_of(api.logs(workflow_id, userId="")) == everyone
    assert [len(api.logs(workflow_id, userId=ada, limit=2, page=p)) for p in (1, 2, 3)] == [2, 1, 0]


def test_user_without_runs_gets_an_empty_list(api: Api) -> None:
    workflow_id = api.create_workflow(echo_workflow())
    ada = api.create_user("ada")
    api.create_user("carol")
    api.activate(ada, workflow_id)
    run_all(api, ada, workflow_id, 1)
    assert api.logs(workflow_id, userId="carol") == []


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "31"},
        {"limit": "abc"},
        {"limit": "-5"},
        {"limit": "2.5"},
        {"pageSize": "0"},
        {"pageSize": "31"},
        {"pageSize": "abc"},
        {"page": "0"},
        {"page": "-1"},
        {"page": "x"},
        {"order": "sideways"},
        {"order": "ascending"},
        {"sortOrder": "up"},
        {"cursor": "not-a-cursor"},
        {"cursor": ""},
        {"cursor": "ZDoxMjM"},  # base64url of "d:123", no place
        # A cursor of Solder before migration 0007: "d:<startedAt>:<execution id>".
        {"cursor": "ZDoxNzMxNjkzNDYyMjMzOlYxU3RHWFI4X1o1amRIaTZCLW15VA"},
        # A cursor of Solder before log positions (migration 0008): "d:<startedAt>:<seq>".
        {"cursor": "ZDoxNzMxNjkzNDYyMjMzOjQy"},
        {"cursor": "ZHc6OTk5OTk5OTk5OTk5OTk5OTk5OQ"},  # "dw:" and 19 nines: past 64 bits
    ],
)
def test_bad_parameters_are_400_in_shape(api: Api, params: dict[str, str]) -> None:
    workflow_id = api.create_workflow(echo_workflow())
    response = api.get(f"/workflows/{workflow_id}/logs", params=params)
    body = assert_error(response, 400)
    assert body == {"error": "invalid_request", "message": body["message"], "status": 400}
    name = next(iter(params))
    assert {"pageSize": "limit", "sortOrder": "order"}.get(name, name) in body["message"]


def page_after(api: Api, workflow_id: str, **params: Any) -> tuple[list[dict[str, Any]], Any]:
    response = api.get(f"/workflows/{workflow_id}/logs", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    return body["data"], body["nextCursor"]


@pytest.mark.parametrize("order", ["desc", "asc"])
def test_cursors_walk_every_log_once_in_order(
    api: Api, history: tuple[str, list[str]], order: str
) -> None:
    workflow_id, ids = history
    by_page, cursor = page_after(api, workflow_id, limit=7, order=order)
    walked, pages = list(by_page), 1
    while cursor is not None and pages < 10:
        logs, cursor = page_after(api, workflow_id, limit=7, cursor=cursor)
        walked += logs
        pages += 1
    assert pages == 4, "7 + 7 + 7 + 4, and the last page says it is the last"
    assert ids_of(walked) == ids_of(api.logs(workflow_id, limit=30, order=order))
    assert sorted(ids_of(walked)) == sorted(ids)


def test_a_cursor_holds_its_place_while_new_runs_arrive(
    api: Api, history: tuple[str, list[str]]
) -> None:
    workflow_id, _ = history
    first, cursor = page_after(api, workflow_id, limit=10)
    user_id = first[0]["userId"]
    run_all(api, user_id, workflow_id, 3)  # three newer logs push every page down by three
    after, _ = page_after(api, workflow_id, limit=10, cursor=cursor)
    shifted, _ = page_after(api, workflow_id, limit=10, page=2)
    assert ids_of(after) == ids_of(api.logs(workflow_id, limit=30))[13:23]
    assert ids_of(shifted)[:3] == ids_of(first)[-3:], "pages by number shift; cursors do not"


def test_a_page_by_number_also_gives_the_cursor_to_the_next(
    api: Api, history: tuple[str, list[str]]
) -> None:
    workflow_id, _ = history
    _, cursor = page_after(api, workflow_id, page=2, limit=5)
    logs, _ = page_after(api, workflow_id, limit=5, cursor=cursor)
    assert ids_of(logs) == ids_of(api.logs(workflow_id, page=3, limit=5))


def test_a_cursor_keeps_the_user_filter_it_is_given(api: Api) -> None:
    user_id, workflow_id = api.install(echo_workflow())
    other = api.create_user("grace")
    api.activate(other, workflow_id)
    run_all(api, user_id, workflow_id, 4)
    run_all(api, other, workflow_id, 4)
    logs, cursor = page_after(api, workflow_id, userId=other, limit=3)
    rest, end = page_after(api, workflow_id, userId=other, limit=3, cursor=cursor)
    assert {log["userId"] for log in logs + rest} == {other}
    assert (len(logs + rest), end) == (4, None)


def test_a_cursor_with_page_or_the_other_order_is_refused(
    api: Api, history: tuple[str, list[str]]
) -> None:
    workflow_id, _ = history
    _, cursor = page_after(api, workflow_id, limit=5)
    url = f"/workflows/{workflow_id}/logs"
    both = assert_error(api.get(url, params={"cursor": cursor, "page": 2}), 400)
    assert "either page or cursor" in both["message"]
    flipped = assert_error(api.get(url, params={"cursor": cursor, "order": "asc"}), 400)
    assert "other order" in flipped["message"]
    same, _ = page_after(api, workflow_id, limit=5, cursor=cursor, order="desc")
    assert len(same) == 5
    empty_page, _ = page_after(api, workflow_id, limit=5, cursor=cursor, page="")
    assert ids_of(empty_page) == ids_of(same), "an empty page means the default, no conflict"


def test_a_cursor_of_one_users_logs_does_not_page_all_users_nor_the_reverse(api: Api) -> None:
    user_id, workflow_id = api.install(echo_workflow())
    run_all(api, user_id, workflow_id, 4)
    url = f"/workflows/{workflow_id}/logs"
    _, of_user = page_after(api, workflow_id, userId=user_id, limit=2)
    _, of_all = page_after(api, workflow_id, limit=2)
    mine = assert_error(api.get(url, params={"cursor": of_user}), 400)
    assert "same userId" in mine["message"]
    everyone = assert_error(api.get(url, params={"cursor": of_all, "userId": user_id}), 400)
    assert "leave userId out" in everyone["message"]
    rest, _ = page_after(api, workflow_id, userId=user_id, limit=2, cursor=of_user)
    assert len(rest) == 2


def test_limit_message_names_the_bounds(api: Api) -> None:
    workflow_id = api.create_workflow(echo_workflow())
    response = api.get(f"/workflows/{workflow_id}/logs", params={"limit": 31})
    assert assert_error(response, 400)["message"] == "limit must be between 1 and 30"


@pytest.mark.parametrize("workflow", [MISSING_ID, "no-such-workflow"])
def test_unknown_workflow_is_404(api: Api, workflow: str) -> None:
    body = assert_error(api.get(f"/workflows/{workflow}/logs"), 404)
    assert body["error"] == "not_found"


@pytest.mark.parametrize("user", [MISSING_ID, "nobody"])
def test_unknown_user_is_404(api: Api, user: str) -> None:
    workflow_id = api.create_workflow(echo_workflow())
    assert_error(api.get(f"/workflows/{workflow_id}/logs", params={"userId": user}), 404)


def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def slow_workflow(api: Api, upstream: Upstream) -> tuple[str, str, list[str]]:
    """A workflow whose middle block calls `upstream` (hold it to keep runs running), and
    an active user: their ids, and the ids of the trigger and the three blocks."""
    upstream.route("/slow", Reply(200, {"ok": True}))
    workflow_id = api.create_workflow(
        {
            "name": "slow",
            "trigger": {"type": "webhook"},
            "blocks": [
                {"name": "before", "connector": "transform", "config": {"expression": "{{ 41 }}"}},
                {
                    "name": "call",
                    "connector": "http",
                    "config": {"url": f"{upstream.base_url}/slow"},
                },
                {"name": "after", "connector": "transform", "config": {"expression": "{{ 42 }}"}},
            ],
        }
    )
    blocks = api.get(f"/workflows/{workflow_id}").json()["data"]["blocks"]
    user_id = api.create_user("ada")
    api.activate(user_id, workflow_id)
    return workflow_id, user_id, [block["id"] for block in blocks]


def shown_while_calling(api: Api, upstream: Upstream, workflow_id: str) -> None:
    """Until the held call is made and the block before it shows in the live log: the
    steps kept before a call are written while it runs, within 0.25 s (engine._KeptSteps).
    """
    until(lambda: len(upstream.requests) == 1)
    until(lambda: len(api.logs(workflow_id)[0]["results"]) == 2)


def test_running_execution_shows_finished_blocks_and_no_stop(api: Api, upstream: Upstream) -> None:
    workflow_id, user_id, blocks = slow_workflow(api, upstream)
    trigger_id, before_id, call_id, after_id = blocks
    upstream.hold()
    try:
        execution_id = api.run(user_id, workflow_id, {"x": 1})
        shown_while_calling(api, upstream, workflow_id)
        (log,) = api.logs(workflow_id)
        assert log["executionId"] == execution_id
        assert log["stoppedAt"] is None
        assert log["finished"] is False
        assert [r["connectorId"] for r in log["results"]] == [trigger_id, before_id]
        assert [i["connectorId"] for i in log["inputs"]] == [trigger_id, before_id]
        assert log["results"][1]["data"] == [
            [{"json": 41, "id": log["results"][1]["data"][0][0]["id"]}]
        ]
        assert all(result["stoppedAt"] is not None for result in log["results"])
    finally:
        upstream.release()
    done = api.wait_for(workflow_id, execution_id)
    assert done["finished"] is True
    assert done["stoppedAt"] is not None
    assert [r["connectorId"] for r in done["results"]] == [trigger_id, before_id, call_id, after_id]
    assert done["results"][:2] == log["results"]


class EndsAfterThePage(DriverConnection):
    """A read connection that lets the running execution end right after the page's
    statement, before its steps are read: the race a busy server sees."""

    def __init__(self, inner: Reader, end_the_run: Callable[[], None]) -> None:
        assert isinstance(inner, DriverConnection)
        self.inner, self.dialect, self.end_the_run = inner, inner.dialect, end_the_run
        self.statements = 0

    async def rows(self, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        self.statements += 1
        if self.statements == 2:
            await asyncio.to_thread(self.end_the_run)
        return await self.inner.rows(sql, params)


def test_a_run_that_ends_while_its_page_is_read_shows_a_whole_log(
    server: Server, api: Api, upstream: Upstream
) -> None:
    workflow_id, user_id, blocks = slow_workflow(api, upstream)
    upstream.hold()
    try:
        execution_id = api.run(user_id, workflow_id, {"x": 1})
        shown_while_calling(api, upstream, workflow_id)
    finally:

        def end_the_run() -> None:
            upstream.release()
            api.wait_for(workflow_id, execution_id)

        async def read_the_page() -> dict[str, Any]:
            db = Database(server.settings.database_url)
            try:
                async with db.read_inline() as conn:
                    reader = EndsAfterThePage(conn, end_the_run)
                    key = str(api.headers["authorization"]).split()[1]
                    page = await executions.page_of_logs(
                        reader,
                        Dictionaries(db),
                        key,
                        workflow_id,
                        None,
                        page=1,
                        limit=10,
                        descending=True,
                    )
                    assert reader.statements == 2  # the page, then the running run's steps
                    return dict(orjson.loads(page))
            finally:
                await db.dispose()

        (log,) = asyncio.run(read_the_page())["data"]
    assert log["executionId"] == execution_id
    # Never a log with blocks missing: either the run as the page's snapshot saw it (SQLite
    # reads in one transaction), or as it ended (PostgreSQL reads each statement apart).
    if databases.on_postgres():
        assert log["finished"] is True
    if log["finished"]:
        assert [r["connectorId"] for r in log["results"]] == blocks
        assert log["stoppedAt"] is not None
    else:
        assert [r["connectorId"] for r in log["results"]] == blocks[:2]
        assert log["stoppedAt"] is None


def test_with_one_database_connection_concurrent_readers_wait_their_turn(
    make_server: Callable[..., Server],
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    server = make_server(database_pool_size=1)
    with api_client(server) as api:
        user_id, workflow_id = api.install(echo_workflow())
        run_all(api, user_id, workflow_id, 3)
        with ThreadPoolExecutor(8) as pool:
            pages = list(pool.map(lambda _: api.logs(workflow_id), range(32)))
    assert all(len(page) == 3 for page in pages)

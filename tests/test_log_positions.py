"""Pages of logs by number at any depth: every page, in both orders, of one user and of
all users, is the slice of the history a client would cut from the whole list, before
and after retention and an erasure leave holes in it, and while runs arrive at once.

A page at offset n is found by the executions' positions in their listing (schema.py,
`log_listings`), not by walking the n before it; these tests hold it to the walk's
answer, computed here from the order the runs were made in.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests import databases
from tests.conftest import TIMEOUT, Api, Server, api_client
from tests.test_logs_pagination import ids_of, page_after

DAY_MS = 24 * 3600 * 1000
LIMITS = (1, 3, 7, 30)


def paged_workflow() -> dict[str, Any]:
    """A run ends at once, unless its trigger asks it to wait (then it stays queued)."""
    return {
        "name": "paged",
        "trigger": {"type": "webhook"},
        "blocks": [
            {"name": "wait", "connector": "delay", "config": {"seconds": "{{ trigger.wait }}"}},
            {"name": "done", "connector": "transform", "config": {"expression": "{{ 1 }}"}},
        ],
    }


def run_and_wait(api: Api, workflow_id: str, user_id: str, wait: int = 0) -> str:
    execution_id = api.run(user_id, workflow_id, {"wait": wait})
    if not wait:
        api.wait_for(workflow_id, execution_id)
    return execution_id


def assert_pages(api: Api, workflow_id: str, history: list[str], user_id: str | None) -> None:
    """Every page by number, in both orders, is its slice of `history` (oldest first),
    one past the last page is empty, and a walk by cursor gives the same list."""
    scope = {} if user_id is None else {"userId": user_id}
    for order, expected in (("desc", history[::-1]), ("asc", history)):
        for limit in LIMITS:
            pages = len(expected) // limit + 2
            for page in range(1, pages + 1):
                got = ids_of(api.logs(workflow_id, page=page, limit=limit, order=order, **scope))
                start = (page - 1) * limit
                assert got == expected[start : start + limit], (order, limit, page)
        walked, cursor = page_after(api, workflow_id, limit=4, order=order, **scope)
        while cursor is not None:
            more, cursor = page_after(api, workflow_id, limit=4, cursor=cursor, **scope)
            walked += more
        assert ids_of(walked) == expected, order


def until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        time.sleep(0.1)


def test_pages_by_number_stay_exact_through_retention_erasure_and_new_runs(
    make_server: Callable[..., Server], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    server = make_server(data_dir=data_dir, retention_sweep_seconds=0.1)
    with api_client(server) as api:
        ada, workflow_id = api.install(paged_workflow())
        grace = api.create_user("grace")
        api.activate(grace, workflow_id)
        made: list[tuple[str, str]] = []  # (user, execution), in the order they were run
        for n in range(16):
            user = ada if n % 3 else grace
            # The fourth run waits a day: it is still queued when the others expire.
            made.append((user, run_and_wait(api, workflow_id, user, 86_400 if n == 3 else 0)))

        def history(user: str | None, gone: set[str]) -> list[str]:
            return [e for u, e in made if (user is None or u == user) and e not in gone]

        def check(gone: set[str]) -> None:
            for user in (None, ada, grace):
                assert_pages(api, workflow_id, history(user, gone), user)

        check(set())

        # The oldest six are two days old; the workflow keeps a day: five go, the
        # queued one stays below the newer ones.
        oldest = [execution for _, execution in made[:6]]
        ids = ", ".join(f"'{i}'" for i in oldest)
        databases.execute(
            data_dir,
            f"UPDATE executions SET started_at = started_at - {2 * DAY_MS} WHERE id IN ({ids})",
        )
        response = api.put(f"/workflows/{workflow_id}/retention", json={"days": 1})
        assert response.status_code == 200, response.text
        purged = set(oldest) - {made[3][1]}
        until(lambda: len(api.logs(workflow_id, limit=30)) == len(made) - len(purged))
        check(purged)

        # Erasing grace's logs leaves holes all through the workflow's listing.
        response = api.delete(f"/users/{grace}/logs")
        assert response.status_code == 200, response.text
        erased = purged | {e for u, e in made if u == grace}
        check(erased)

        # New runs of both go on from where the listings stood.
        for n in range(5):
            user = grace if n % 2 else ada
            made.append((user, run_and_wait(api, workflow_id, user)))
        check(erased)


def test_runs_accepted_at_once_take_one_place_each_in_start_order(
    make_server: Callable[..., Server],
) -> None:
    server = make_server()
    with api_client(server) as api:
        ada, workflow_id = api.install(paged_workflow())
        grace = api.create_user("grace")
        api.activate(grace, workflow_id)
        users = [ada, grace] * 20
        with ThreadPoolExecutor(8) as pool:
            made = list(pool.map(lambda user: api.run(user, workflow_id, {"wait": 0}), users))
        until(
            lambda: (
                sum(log["finished"] for log in api.logs(workflow_id, limit=30))
                + sum(log["finished"] for log in api.logs(workflow_id, limit=30, page=2))
                == len(made)
            )
        )
        for user in (None, ada, grace):
            scope = {} if user is None else {"userId": user}
            logs = [
                log
                for page in range(1, 8)
                for log in api.logs(workflow_id, page=page, limit=7, **scope)
            ]
            wanted = [e for u, e in zip(users, made, strict=True) if user in (None, u)]
            assert sorted(ids_of(logs)) == sorted(wanted), "each run once, none left out"
            started = [log["startedAt"] for log in logs]
            assert started == sorted(started, reverse=True), "newest first by startedAt too"

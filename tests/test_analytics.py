"""A workflow's analytics (`GET /workflows/{id}/analytics`) are summed once per listing
and then read from the executions recorded since (solder/store/totals.py): these tests
hold every answer, of all users and of each, to the runs made and to a count of the
stored executions, while runs end long after they were summed, retention purges, a
user's logs are erased, and all of it happens at once. The fold's thresholds are made
tiny, so that nearly every answer sums a few positions first, and so is the number of
rows a statement names, so that a purge's and an erasure's are taken in parts."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from solder import retention
from solder.store import totals
from tests import databases
from tests.conftest import Api, Server, api_client
from tests.test_retention import backdate
from tests.test_retention_walk import purge_now
from tests.upstream import Reply, Request, Upstream

DAY_S = 86_400


def analysed(upstream: Upstream) -> dict[str, Any]:
    """Waits as its trigger says, fails in a block when told to (no call to another
    app), else calls one, which answers 400 when told to (a failed call: an error and an
    app action)."""
    return {
        "name": "Waits, checks, calls",
        "trigger": {"type": "webhook"},
        "blocks": [
            {"name": "wait", "connector": "delay", "config": {"seconds": "{{ trigger.wait }}"}},
            {
                "name": "check",
                "connector": "transform",
                "config": {"expression": "{{ trigger.fail ? 1 + 'a' : trigger }}"},
            },
            {
                "name": "call",
                "connector": "http",
                "config": {
                    "method": "POST",
                    "url": f"{upstream.base_url}/hook",
                    "body": "{{ trigger }}",
                },
            },
        ],
    }


def bad_calls_fail(request: Request) -> Reply:
    return Reply(400 if json.loads(request.body).get("bad") else 200, {})


@dataclass
class Run:
    user: str
    id: str
    fail: bool = False
    bad: bool = False
    wait: int = 0
    ended: bool = False


class Workflow:
    """A workflow of two users, its runs as made, and the checks of its analytics."""

    def __init__(self, api: Api, upstream: Upstream, data_dir: Path) -> None:
        upstream.route("/hook", bad_calls_fail)
        self.api, self.data_dir = api, data_dir
        self.ada, self.id = api.install(analysed(upstream))
        self.grace = api.create_user("grace")
        api.activate(self.grace, self.id)
        self.runs: list[Run] = []

    def run(self, user: str, *, fail: bool = False, bad: bool = False, wait: int = 0) -> Run:
        trigger = {"wait": wait, "fail": fail, "bad": bad}
        run = Run(user, self.api.run(user, self.id, trigger), fail, bad, wait)
        self.runs.append(run)
        return run

    def end(self, runs: list[Run]) -> None:
        for run in runs:
            log = self.api.wait_for(self.id, run.id)
            assert log["status"] == ("failed" if run.fail or run.bad else "succeeded")
            run.ended = True

    def forget(self, ids: set[str]) -> None:
        self.runs = [run for run in self.runs if run.id not in ids]

    def expected(self, user: str | None) -> dict[str, int]:
        """What the runs made and still kept count: an unended run counts as a run."""
        runs = [run for run in self.runs if user in (None, run.user)]
        ended = [run for run in runs if run.ended]
        return {
            "totalWorkflowRuns": len(runs),
            "totalErrors": sum(run.fail or run.bad for run in ended),
            "totalAppActions": sum(not run.fail for run in ended),
        }

    def stored(self, user: str | None) -> dict[str, int]:
        """The same, counted from every stored execution (what an answer read before)."""
        of_user = "" if user is None else f" AND u.user_id = '{user}'"
        [(runs, errors, app_actions)] = databases.rows(
            self.data_dir,
            "SELECT count(*), count(e.failed), coalesce(sum(e.app_actions), 0)"
            " FROM executions e"
            " JOIN workflow_numbers w ON w.number = e.workflow_number"
            " JOIN user_numbers u ON u.number = e.user_number"
            f" WHERE w.workflow_id = '{self.id}'{of_user}",
        )
        return {
            "totalWorkflowRuns": int(str(runs)),
            "totalErrors": int(str(errors)),
            "totalAppActions": int(str(app_actions)),
        }

    def analytics(self, user: str | None) -> dict[str, int]:
        params = {} if user is None else {"userId": user}
        answer = self.api.get(f"/workflows/{self.id}/analytics", params=params)
        assert answer.status_code == 200, answer.text
        counted: dict[str, int] = answer.json()
        return counted

    def check(self) -> None:
        for user in (None, self.ada, self.grace):
            assert self.analytics(user) == self.expected(user) == self.stored(user), user

    def unsummed(self) -> int:
        [(count,)] = databases.rows(self.data_dir, "SELECT count(*) FROM listing_unsummed")
        return int(str(count))


@pytest.fixture
def tiny_folds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(totals, "FOLD_AFTER", 2)
    monkeypatch.setattr(totals, "FOLD_CHUNK", 3)
    monkeypatch.setattr(totals, "_ROWS_A_STATEMENT", 2)  # an erasure's many, in parts


@pytest.mark.usefixtures("tiny_folds")
def test_analytics_stay_exact_as_runs_end_late_and_are_purged_or_erased(
    make_server: Callable[..., Server], tmp_path: Path, upstream: Upstream
) -> None:
    data_dir = tmp_path / "data"
    server = make_server(data_dir=data_dir, retention_sweep_seconds=3600)
    with api_client(server) as api:
        flow = Workflow(api, upstream, data_dir)
        ada, grace = flow.ada, flow.grace
        # Two runs end a few seconds after the first answers summed them, one failing; one
        # of each user waits a day.
        late = [flow.run(grace, fail=True, wait=4), flow.run(ada, wait=4)]
        waiting = [flow.run(ada, wait=DAY_S), flow.run(grace, wait=DAY_S)]
        made = [flow.run((ada, grace)[n % 2], fail=n % 5 == 1, bad=n % 4 == 2) for n in range(12)]
        flow.end(made)
        flow.check()
        # The first answers summed every listing, leaving the four unended runs unsummed
        # in the listing of all users and in their user's.
        assert flow.unsummed() == 8

        # Ended, they count at once, read where they were left; the next sum of each
        # listing (after three runs more of each user) folds them in.
        flow.end(late)
        flow.check()
        flow.end(
            [flow.run(user, fail=n == 1, bad=n == 2) for n in range(3) for user in (ada, grace)]
        )
        flow.check()
        assert flow.unsummed() == 4, "the two late runs were summed once ended"

        # Retention: the late runs and the first six made are two days old, and so are
        # the runs waiting a day, which have not ended and stay.
        old = [run.id for run in [*late, *made[:6]]]
        backdate(data_dir, [*old, *(run.id for run in waiting)], 2)
        response = api.put(f"/workflows/{flow.id}/retention", json={"days": 1})
        assert response.status_code == 200, response.text
        assert purge_now(server) == len(old)
        flow.forget(set(old))
        flow.check()

        # Erasing grace's logs takes her runs out, summed or not (her waiting one too).
        response = api.delete(f"/users/{grace}/logs")
        assert response.status_code == 200, response.text
        flow.forget({run.id for run in flow.runs if run.user == grace})
        flow.check()
        assert flow.unsummed() == 2, "ada's waiting run, in two listings"

        # New runs: read above the totals (two, under the fold's threshold), then summed.
        flow.end([flow.run(grace, bad=True), flow.run(ada)])
        flow.check()
        flow.end([flow.run(grace, fail=True), flow.run(ada, bad=True), flow.run(ada)])
        flow.check()

        # Deleting the workflow drops its totals with its logs (ada's waiting run too).
        response = api.delete(f"/workflows/{flow.id}")
        assert response.status_code == 200, response.text
        assert api.get(f"/workflows/{flow.id}/analytics").status_code == 404
        assert databases.rows(data_dir, "SELECT count(*) FROM listing_totals") == [(0,)]
        assert flow.unsummed() == 0


@pytest.mark.usefixtures("tiny_folds")
def test_analytics_stay_exact_while_answers_sum_as_retention_purges_and_runs_arrive(
    make_server: Callable[..., Server],
    tmp_path: Path,
    upstream: Upstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(totals, "FOLD_AFTER", 0)
    monkeypatch.setattr(totals, "FOLD_CHUNK", 7)
    monkeypatch.setattr(retention, "BATCH", 5)
    data_dir = tmp_path / "data"
    server = make_server(data_dir=data_dir, retention_sweep_seconds=3600)
    with api_client(server) as api:
        flow = Workflow(api, upstream, data_dir)
        ada, grace = flow.ada, flow.grace
        first: list[Run] = []
        for n in range(60):
            first.append(flow.run((ada, grace)[n % 2], fail=n % 7 == 3, bad=n % 5 == 1))
            if n % 20 == 19:  # wait_for finds a run among the newest 30
                flow.end(first[-20:])
        old = [run.id for run in first[:40]]
        backdate(data_dir, old, 2)
        response = api.put(f"/workflows/{flow.id}/retention", json={"days": 1})
        assert response.status_code == 200, response.text

        start = threading.Barrier(3)
        newer: list[Run] = []

        def ask() -> None:
            start.wait()
            for n in range(45):
                flow.analytics((None, ada, grace)[n % 3])

        def purge() -> int:
            start.wait()
            return purge_now(server)

        def run_more() -> None:
            start.wait()
            for n in range(20):
                newer.append(flow.run((grace, ada)[n % 2], fail=n % 6 == 0, bad=n % 4 == 1))

        with ThreadPoolExecutor(3) as pool:
            asked, purged, ran = pool.submit(ask), pool.submit(purge), pool.submit(run_more)
            asked.result()
            ran.result()
            assert purged.result() == len(old)
        flow.end(newer)
        flow.forget(set(old))
        flow.check()

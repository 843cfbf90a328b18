"""Retention walks each workflow's executions oldest first by position, a few at a time:
it purges every ended execution past retention up to the first it keeps, steps over
those still queued, and leaves the logs pages exact (docs/decisions.md, "Lean
executions")."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from solder import retention
from solder.retention import Retention
from solder.store.database import Database
from tests import databases
from tests.conftest import Server, api_client
from tests.test_log_positions import assert_pages, paged_workflow, run_and_wait
from tests.test_retention import backdate


def purge_now(server: Server) -> int:
    async def purge() -> int:
        db = Database(server.settings.database_url)
        try:
            return await Retention(db, server.settings).purge()
        finally:
            await db.dispose()

    return asyncio.run(purge())


def test_the_purge_walks_by_position_past_queued_runs_to_the_first_kept(
    make_server: Callable[..., Server], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "BATCH", 3)  # many windows over a short history
    data_dir = tmp_path / "data"
    server = make_server(data_dir=data_dir, retention_sweep_seconds=3600)
    with api_client(server) as api:
        ada, workflow_id = api.install(paged_workflow())
        grace = api.create_user("grace")
        api.activate(grace, workflow_id)
        made: list[tuple[str, str]] = []
        for n in range(20):
            user = grace if n % 4 == 1 else ada
            # Runs 4 and 9 wait a day: still queued when those around them expire.
            made.append((user, run_and_wait(api, workflow_id, user, 86_400 * (n in (4, 9)))))
        ids = [execution for _, execution in made]
        response = api.put(f"/workflows/{workflow_id}/retention", json={"days": 1})
        assert response.status_code == 200, response.text
        # The oldest 13 are two days old; so is run 15, recorded after run 14, which is
        # not (as if its host's clock were behind).
        backdate(data_dir, [*ids[:13], ids[15]], 2)

        assert purge_now(server) == 11, "13 expired, two of them still queued"
        kept = [ids[4], ids[9], *ids[13:]]
        for scope in (None, ada, grace):
            history = [e for u, e in made if e in kept and scope in (None, u)]
            assert_pages(api, workflow_id, history, scope)

        # Run 15 waits behind runs 13 and 14; once they expire, all three go.
        backdate(data_dir, [ids[14]], 2)
        assert purge_now(server) == 0, "run 13, the first kept, still stops the walk"
        backdate(data_dir, [ids[13]], 2)
        assert purge_now(server) == 3
        assert purge_now(server) == 0, "nothing left past retention"
        kept = [ids[4], ids[9], *ids[16:]]
        assert_pages(api, workflow_id, kept, None)
        assert databases.rows(
            data_dir, "SELECT count(*) FROM executions WHERE status = 'queued'"
        ) == [(2,)]

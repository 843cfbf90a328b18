"""The failed executions of a workflow (`GET /workflows/{id}/errors`): listed newest first
from an index of their own, however many executions succeeded around them (migration
0016), on the database of this run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, text

from solder.store import queries
from tests.conftest import Api
from tests.test_migrations import empty_database, engine_at

SOMETIMES_FAILING = {
    "name": "Fails when told to",
    "trigger": {"type": "webhook"},
    "blocks": [
        {
            "name": "check",
            "connector": "transform",
            "config": {"expression": "{{ trigger.fail ? 1 + 'a' : {'ok': true} }}"},
        }
    ],
}


def test_errors_lists_the_failed_executions_newest_first_of_all_users_or_one(
    api: Api,
) -> None:
    ada, workflow_id = api.install(SOMETIMES_FAILING)
    bob = api.create_user("bob")
    api.activate(bob, workflow_id)
    runs: list[tuple[str, str, bool]] = []
    for n in range(14):
        user = (ada, bob)[n % 2]
        fail = n in (1, 2, 5, 8, 9, 13)
        runs.append((api.run(user, workflow_id, {"fail": fail, "n": n}), user, fail))
    for execution_id, _, _ in runs:
        api.wait_for(workflow_id, execution_id)

    def errors(**params: Any) -> list[dict[str, Any]]:
        answer = api.get(f"/workflows/{workflow_id}/errors", params=params)
        assert answer.status_code == 200, answer.text
        data: list[dict[str, Any]] = answer.json()["data"]
        return data

    newest_first = [(execution, user) for execution, user, fail in reversed(runs) if fail]
    listed = errors()
    assert [error["executionId"] for error in listed] == [e for e, _ in newest_first]
    assert {error["block"] for error in listed} == {"check"}
    assert all("1 + 'a'" in error["message"] for error in listed)
    of_bob = [e for e, user in newest_first if user == bob]
    assert [error["executionId"] for error in errors(userId=bob)] == of_bob
    assert len(of_bob) == 4
    assert [error["executionId"] for error in errors(userId=bob, limit=2, page=2)] == of_bob[2:4]

    totals = api.get(f"/workflows/{workflow_id}/analytics").json()
    assert totals["totalWorkflowRuns"] == 14
    assert totals["totalErrors"] == 6

    # A rerun is a new execution with the same trigger: it fails again, newest, and the
    # failure it reran stays listed.
    failed_first = runs[1][0]
    rerun = api.post(f"/workflows/{workflow_id}/rerun/{failed_first}", params={"userId": bob})
    assert rerun.status_code == 200, rerun.text
    again = rerun.json()["executionId"]
    api.wait_for(workflow_id, again)
    assert [error["executionId"] for error in errors()] == [again] + [e for e, _ in newest_first]


def _workflow(conn: Connection, *users: str) -> None:
    """Tenant `t`, its workflow `w` (number 1) and `users` (numbered 1, 2... in order)."""
    conn.execute(text("INSERT INTO tenants (id, name, created_at) VALUES ('t', 't', 1)"))
    conn.execute(text("INSERT INTO workflow_numbers (tenant_id, workflow_id) VALUES ('t', 'w')"))
    for user in users:
        conn.execute(
            text("INSERT INTO user_numbers (tenant_id, user_id) VALUES ('t', :u)"), {"u": user}
        )


def _fill(conn: Connection, *, succeeded: int, failed_every: int) -> list[str]:
    """A workflow of two users with `succeeded` executions each, one in every
    `failed_every` of them failed instead: the failed ids, newest first."""
    _workflow(conn, "u1", "u2")
    rows, failures = [], []
    for n in range(1, 2 * succeeded + 1):
        failed = n % failed_every == 0
        rows.append(
            {
                "id": f"e{n:06d}",
                "user": 1 + n % 2,
                "status": "failed" if failed else "succeeded",
                "failed": True if failed else None,
                "n": n,
                "user_position": (n + 1) // 2,
            }
        )
        if failed:
            failures.append(f"e{n:06d}")
    conn.execute(
        text(
            "INSERT INTO executions (tenant_id, id, workflow_number, user_number,"
            " workflow_version, status, failed, trigger_id, trigger_data, started_at,"
            " stopped_at, error_block, error_message, workflow_position, user_position)"
            " VALUES ('t', :id, 1, :user, 1, :status, :failed, '', '', :n, :n, 'b', 'm', :n,"
            " :user_position)"
        ),
        rows,
    )
    conn.execute(text("ANALYZE"))
    return failures[::-1]


def _plan(engine: Engine, user_id: str | None) -> str:
    page = queries.failed_executions_page("t", "w", user_id, limit=30, offset=0)
    sql = str(page.compile(engine, compile_kwargs={"literal_binds": True}))
    explain = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
    with engine.connect() as conn:
        return "\n".join(str(row[-1]) for row in conn.exec_driver_sql(explain + sql))


def test_a_page_of_failures_is_read_from_their_index(tmp_path: Path) -> None:
    """Among 20,000 executions that succeeded, a page of the 20 failed ones is read from
    the failures' index, of one user and of all, not found by reading every execution of
    the workflow (which cost 100 ms on 100,000: bench/RESULTS.md)."""
    db = empty_database(tmp_path)
    db.migrate()
    engine = create_engine(db.sync_url)
    try:
        with engine.begin() as conn:
            failures = _fill(conn, succeeded=10_000, failed_every=1_000)
        plans = {user: _plan(engine, user) for user in (None, "u1")}
        with engine.connect() as conn:
            pages = [
                [row.id for row in conn.execute(page)]
                for page in (
                    queries.failed_executions_page("t", "w", None, limit=30, offset=0),
                    queries.failed_executions_page("t", "w", "u1", limit=5, offset=5),
                )
            ]
    finally:
        engine.dispose()
    assert len(failures) == 20
    assert pages == [failures, failures[5:10]]
    assert "ix_executions_failures " in plans[None] + " ", plans[None]
    assert "ix_executions_failures_user" in plans["u1"], plans["u1"]


def test_executions_failed_before_the_indexes_are_in_them(tmp_path: Path) -> None:
    """Migration 0016 marks the executions that had failed before it: the errors pages
    list them."""
    from solder.store import migrate

    db = empty_database(tmp_path)
    with engine_at(db, "0015") as engine:
        with engine.begin() as conn:
            _workflow(conn, "u")
            for n, status in enumerate(("failed", "succeeded", "failed", "running"), 1):
                conn.execute(
                    text(
                        "INSERT INTO executions (tenant_id, id, workflow_number, user_number,"
                        " workflow_version, status, trigger_id, trigger_data, started_at,"
                        " workflow_position, user_position)"
                        " VALUES ('t', :id, 1, 1, 1, :status, '', '', :n, :n, :n)"
                    ),
                    {"id": f"e{n}", "status": status, "n": n},
                )
        migrate.upgrade(engine)
        with engine.connect() as conn:
            marked = conn.execute(text("SELECT id, failed FROM executions ORDER BY id")).all()
            pages = [
                [
                    row.id
                    for row in conn.execute(
                        queries.failed_executions_page("t", "w", user, limit=30, offset=0)
                    )
                ]
                for user in (None, "u")
            ]
    assert [(id_, None if failed is None else bool(failed)) for id_, failed in marked] == [
        ("e1", True),
        ("e2", None),
        ("e3", True),
        ("e4", None),
    ]
    assert pages == [["e3", "e1"], ["e3", "e1"]]

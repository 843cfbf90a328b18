"""procrastinate's job fetch: planned once, not at every call

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 12:00:00.000000

`procrastinate_fetch_job_v2` is PL/pgSQL: its query's plan is cached in each session,
and PostgreSQL chooses at every call between the cached generic plan and a custom plan
made for that call's arguments (`plan_cache_mode = auto`), by the two plans' estimated
costs. Under load the choice turned: the queue's statistics change at every ANALYZE
(autovacuum's, every few seconds on a busy queue), and from some ANALYZE on a fetch
planned its query again at 25 to 40 % of its calls, 0.33 ms of planning each, more than
the query's own execution (0.08 to 0.11 ms). In a 700 runs a second load on two cores,
PostgreSQL's CPU rose by a third from that moment in most loads, and stayed so
(bench/RESULTS.md, "The job fetch planned at every call").

Migration 0010 already leaves the planner one way to run the query (index scans in
nested loops), whatever the arguments and the statistics: a custom plan walks the same
indexes, and only adds its planning. The fetch now always runs the generic plan
(`plan_cache_mode = force_generic_plan` for the function alone, beside 0010's
settings); it is made again only when the table's statistics or schema change.
procrastinate's `CREATE OR REPLACE` of the function would drop this setting as it
would 0010's (tests/test_jobs.py reads the plans of a session's first calls).
PostgreSQL only: on SQLite there are no jobs.
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_FETCH = "procrastinate_fetch_job_v2(character varying[], bigint)"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"ALTER FUNCTION {_FETCH} SET plan_cache_mode = force_generic_plan")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"ALTER FUNCTION {_FETCH} RESET plan_cache_mode")

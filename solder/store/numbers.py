"""The numbers `executions` knows its workflow and user by (schema: `workflow_numbers`,
`user_numbers`), and the execution's columns with those numbers turned back into ids.

A number is drawn when its workflow or user is created, and outlives it (schema.py).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, exists, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from solder.store.schema import executions, user_numbers, workflow_numbers


def _number(table: Any, id_column: Any, tenant_id: Any, id_: Any) -> Any:
    """The number of a tenant's row of `table`, as a scalar subquery (null if none)."""
    return (
        select(table.c.number)
        .where(table.c.tenant_id == tenant_id, id_column == id_)
        .scalar_subquery()
    )


def workflow_number(tenant_id: Any, workflow_id: Any) -> Any:
    return _number(workflow_numbers, workflow_numbers.c.workflow_id, tenant_id, workflow_id)


def user_number(tenant_id: Any, user_id: Any) -> Any:
    return _number(user_numbers, user_numbers.c.user_id, tenant_id, user_id)


def _draw(table: Any, id_column: Any) -> Any:
    tenant: Any = bindparam("tenant_id")
    id_: Any = bindparam("id")
    taken = exists().where(table.c.tenant_id == tenant, id_column == id_)
    return insert(table).from_select(
        ["tenant_id", id_column.name], select(tenant, id_).where(~taken)
    )


_DRAW_WORKFLOW = _draw(workflow_numbers, workflow_numbers.c.workflow_id)
_DRAW_USER = _draw(user_numbers, user_numbers.c.user_id)


async def draw_workflow(conn: AsyncConnection, tenant_id: str, workflow_id: str) -> None:
    """Give a new workflow its number, in the transaction that creates it."""
    await conn.execute(_DRAW_WORKFLOW, {"tenant_id": tenant_id, "id": workflow_id})


async def draw_user(conn: AsyncConnection, tenant_id: str, user_id: str) -> None:
    """Give a new user its number, in the transaction that creates it."""
    await conn.execute(_DRAW_USER, {"tenant_id": tenant_id, "id": user_id})


# An execution with its workflow's and user's ids, as callers know it. Numbers are
# never deleted (but with their tenant), so the inner joins drop no execution.
WITH_IDS = executions.join(
    workflow_numbers, workflow_numbers.c.number == executions.c.workflow_number
).join(user_numbers, user_numbers.c.number == executions.c.user_number)

COLUMNS = (
    *(c for c in executions.c if c.name not in ("workflow_number", "user_number")),
    workflow_numbers.c.workflow_id,
    user_numbers.c.user_id,
)


def of_tenant_workflows(tenant_id: Any) -> Any:
    """`executions` of any workflow of the tenant: for a filter that has no workflow (by
    user), so that it still walks the logs indexes, one workflow at a time."""
    return executions.c.workflow_number.in_(
        select(workflow_numbers.c.number).where(workflow_numbers.c.tenant_id == tenant_id)
    )

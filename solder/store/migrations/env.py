"""Alembic environment: runs on the connection `solder.store.migrate` hands it."""

from __future__ import annotations

from alembic import context

from solder.store.schema import declared_on, metadata, owned_by_solder

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `solder migrate` or `solder serve`")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
    include_name=owned_by_solder,
    include_object=declared_on(connection.dialect.name),
)
with context.begin_transaction():
    context.run_migrations()

"""Runs one execution: resolve each block's expressions, call its connector, record the step.

Each finished step is durable before the next block starts. When an execution is run
again (its process died), the recorded steps are replayed instead of re-run, so it
resumes after its last finished step.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import orjson

from solder import logs
from solder.connectors import BlockFailed, BlockResult, Connector, Item, RunContext
from solder.definitions import Block, Definition, from_document
from solder.expressions import ExpressionError, resolve
from solder.ids import item_id, now_ms
from solder.settings import Settings
from solder.store import queries as q
from solder.store.database import Database

log = logging.getLogger("solder.engine")

_MAX_BACKOFF_MS = 300_000


class Engine:
    """Runs executions that the dispatcher has claimed."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        http: httpx.AsyncClient,
        connectors: Mapping[str, Connector],
    ) -> None:
        self.db = db
        self.settings = settings
        self.http = http
        self.connectors = connectors
        self._definitions: dict[tuple[str, str, int], Definition] = {}

    async def run(self, tenant_id: str, execution_id: str) -> None:
        """Run (or resume) a claimed execution to its end."""
        async with self.db.read() as conn:
            execution = await q.execution(conn, tenant_id, execution_id)
            if execution is None or execution["status"] != "running":
                return
            definition = await self._definition(
                conn, tenant_id, execution["workflow_id"], execution["workflow_version"]
            )
            user = await q.user_by_id(conn, tenant_id, execution["user_id"])
            recorded = {s["seq"]: s for s in await q.execution_steps(conn, tenant_id, execution_id)}
        if definition is None:
            await self._finish(tenant_id, execution_id, "failed", None, "workflow version is gone")
            return
        context: dict[str, Any] = {
            "trigger": orjson.loads(execution["trigger_data"]),
            "blocks": {},
            "user": {"userId": execution["user_id"], "username": user and user["username"]},
        }
        run_context = RunContext(self.settings, self.http, execution_id, context["user"])
        for seq, block in enumerate(definition.blocks, start=1):
            step = recorded.get(seq) or await self._run_block(
                tenant_id, execution_id, seq, block, context, run_context
            )
            if step is None:  # the execution was erased while it ran
                return
            outputs = orjson.loads(step["data"])
            context["blocks"][block.name] = _block_value(outputs)
            if step["error"] is not None and block.on_error == "stop":
                message = orjson.loads(step["error"])["message"]
                await self._finish(tenant_id, execution_id, "failed", block.name, message)
                return
        await self._finish(tenant_id, execution_id, "succeeded", None, None)

    async def _definition(
        self, conn: q.Conn, tenant_id: str, workflow_id: str, version: int
    ) -> Definition | None:
        key = (tenant_id, workflow_id, version)
        if key not in self._definitions:
            row = await q.workflow_version(conn, tenant_id, workflow_id, version)
            if row is None:
                return None
            if len(self._definitions) > 1024:
                self._definitions.clear()
            self._definitions[key] = from_document(orjson.loads(row["definition"]), self.connectors)
        return self._definitions[key]

    async def _run_block(
        self,
        tenant_id: str,
        execution_id: str,
        seq: int,
        block: Block,
        context: Mapping[str, Any],
        run_context: RunContext,
    ) -> dict[str, Any] | None:
        started = now_ms()
        resolved: Any = block.config
        outputs: list[list[Item]] = [[]]
        error: str | None = None
        app_actions = 0
        attempt = 0
        connector = self.connectors.get(block.connector)
        while True:
            attempt += 1
            try:
                if connector is None:
                    raise BlockFailed(f"connector {block.connector!r} is not installed")
                resolved = resolve(block.config, context, self.settings.expression_timeout_ms)
                result: BlockResult = await connector.run(connector.parse(resolved), run_context)
                outputs = result.outputs
                app_actions += result.app_actions
                error = None
            except ExpressionError as exc:
                error = str(exc)
            except BlockFailed as exc:
                app_actions += exc.app_actions
                outputs = [exc.items]
                error = exc.message
                if exc.retryable and attempt < block.retry.attempts:
                    await asyncio.sleep(_backoff_ms(block, attempt) / 1000)
                    continue
            except Exception as exc:
                log.exception("connector %s failed in execution %s", block.connector, execution_id)
                error = f"internal error in connector {block.connector!r}: {exc!r}"
            break
        shown = connector.redact(resolved) if connector else resolved
        try:
            data, inputs = _items_text(outputs), _text(shown)
        except TypeError as exc:  # e.g. an integer beyond 64 bits from an expression
            error = error or f"the block's output or inputs cannot be stored as JSON: {exc}"
            unresolved = connector.redact(block.config) if connector else block.config
            data, inputs = _items_text([[]]), _text(unresolved)
        if error is not None and block.on_error == "continue":
            data = _items_text([[{"json": {"error": {"message": error}}}]])
        step = {
            "tenant_id": tenant_id,
            "execution_id": execution_id,
            "seq": seq,
            "connector_id": block.id,
            "block_name": block.name,
            "started_at": started,
            "stopped_at": now_ms(),
            "data": data,
            "inputs": inputs,
            "error": None if error is None else _text({"message": error, "attempts": attempt}),
            "app_actions": app_actions,
        }
        async with self.db.write() as conn:
            current = await q.execution(conn, tenant_id, execution_id)
            if current is None or current["status"] != "running":
                return None
            await q.insert_step(conn, **step)
        return step

    async def fail(self, tenant_id: str, execution_id: str, message: str) -> None:
        """End a running execution as failed, outside of any block."""
        await self._finish(tenant_id, execution_id, "failed", None, message)

    async def _finish(
        self,
        tenant_id: str,
        execution_id: str,
        status: str,
        error_block: str | None,
        error_message: str | None,
    ) -> None:
        """Write the execution's end and its whole log document, in one transaction."""
        async with self.db.write() as conn:
            execution = await q.execution(conn, tenant_id, execution_id)
            if execution is None or execution["status"] != "running":
                return
            steps = await q.execution_steps(conn, tenant_id, execution_id)
            ended = {**execution, "status": status, "stopped_at": now_ms()}
            await q.finish_execution(
                conn,
                tenant_id,
                execution_id,
                status=status,
                stopped_at=ended["stopped_at"],
                error_block=error_block,
                error_message=error_message,
                app_actions=sum(s["app_actions"] for s in steps),
                log=orjson.dumps(logs.render(ended, steps)),
            )


def _text(value: Any) -> str:
    return orjson.dumps(value).decode()


def _items_text(outputs: list[list[Item]]) -> str:
    return _text([[_with_id(item) for item in output] for output in outputs])


def _with_id(item: Item) -> Item:
    """An output item with its `json` first and a fresh `id` last, as in the seed."""
    extras = {k: v for k, v in item.items() if k not in ("json", "id")}
    return {"json": item.get("json"), **extras, "id": item.get("id") or item_id()}


def _block_value(outputs: Sequence[Sequence[Item]]) -> Any:
    """What `blocks.<name>` means in expressions: the json of the first output's items."""
    for output in outputs:
        if output:
            return output[0]["json"] if len(output) == 1 else [i["json"] for i in output]
    return None


def _backoff_ms(block: Block, attempt: int) -> float:
    delay = block.retry.delay_ms
    if block.retry.backoff == "exponential":
        delay *= 2 ** (attempt - 1)
    return min(delay, _MAX_BACKOFF_MS)

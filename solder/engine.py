"""Runs one execution: resolve each block's expressions, call its connector, record the step.

Each finished step is durable before the next block starts. When an execution is run
again (its process died, or it waited out a delay), the recorded steps are replayed in
the same order instead of being run, so it resumes after its last finished step. Steps
are numbered in the order they ran (`seq`); branch decisions and loop lists are derived
from recorded outputs and the definition, so the replay takes the same path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from solder import logs
from solder.connectors import (
    BlockFailed,
    BlockResult,
    Connector,
    CredentialLookup,
    Item,
    RunContext,
    no_credentials,
)
from solder.credentials import scrub
from solder.definitions import Block, Definition, from_document
from solder.dictionaries import Dictionaries
from solder.errors import Unavailable
from solder.expressions import ExpressionError, resolve
from solder.ids import item_id, now_ms
from solder.network import HttpClient
from solder.settings import Settings
from solder.store import codec, queue
from solder.store import queries as q
from solder.store.database import Database
from solder.store.prepared import Row

log = logging.getLogger("solder.engine")

_MAX_BACKOFF_MS = 300_000
# How many steps of pure blocks, and for how long, may wait to be written (`_record`).
_MAX_PENDING = 1000
_MAX_PENDING_SECONDS = 0.25


@dataclass(frozen=True, slots=True)
class Stop:
    """This run ends here: the execution failed in `block`, or (`halt`) it waits for a
    delay or was ended elsewhere, and must be left as it is."""

    block: str | None = None
    message: str | None = None
    halt: bool = False


@dataclass
class _Run:
    """One execution being run: where it is, and what its expressions can see."""

    tenant_id: str
    execution_id: str
    lease: str
    recorded: dict[int, Any]
    context: dict[str, Any]
    run_context: RunContext
    wake_at: int | None
    wait_started_at: int | None
    seq: int = 0
    current: Any = None
    """The value the latest block produced: what branch and delay pass on."""
    iteration: list[int] = field(default_factory=list)
    pending: list[dict[str, Any]] = field(default_factory=list)
    """Steps not written yet: of pure blocks, which go with the next step written, and
    of the latest call (`call_pending`)."""
    pending_since: float = 0.0
    call_pending: bool = False
    """The latest block's step is pending and it called out: it is written before any
    other block starts, or with the execution's end when it was the last (`_record`)."""
    execution: Mapping[str, Any] = field(default_factory=dict)
    """The execution's row as the run began: what its log shows of it never changes."""
    written: list[dict[str, Any]] = field(default_factory=list)
    """The steps this run wrote: with `recorded` and `pending`, the whole log so far."""

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq


CredentialsFor = Callable[[str, str], CredentialLookup]


class Engine:
    """Runs executions that the dispatcher has claimed."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        http: HttpClient,
        connectors: Mapping[str, Connector],
        credentials_for: CredentialsFor | None = None,
        dictionaries: Dictionaries | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.http = http
        self.connectors = connectors
        self.credentials_for = credentials_for
        self.dictionaries = dictionaries
        """Each tenant's log dictionary, kept in memory: None, the skeleton for all."""
        self.on_park: Callable[[int], None] = lambda _wake_at: None
        """Told when an execution starts waiting, with when it wants to run again."""
        self.on_job_done: Callable[[int], None] = lambda _job: None
        """Told when an execution's end also deleted the procrastinate job that ran it
        (PostgreSQL): the worker has nothing left to record of that job."""
        self._definitions: dict[tuple[str, str, int], Definition] = {}

    async def run(
        self,
        tenant_id: str,
        execution_id: str,
        lease: str,
        taken: tuple[Row, Sequence[Row]] | None = None,
    ) -> None:
        """Run (or resume) an execution claimed under `lease` until it ends or waits;
        `taken`: the execution and its stored steps as its claim read them
        (`queue.take`), if it did.

        Every write checks the lease: once the execution is given to another worker (this
        one was presumed dead), nothing more is written from here.
        """
        async with self.db.read_inline() as conn:
            if taken is None:
                execution = await q.execution_to_run(conn, tenant_id, execution_id)
                stored = None
            else:
                execution, stored = taken
            if execution is None or execution["status"] != "running":
                return
            if execution["lease"] != lease:
                return
            definition = await self._definition(
                conn, tenant_id, execution["workflow_id"], execution["workflow_version"]
            )
            if stored is None:
                stored = await q.execution_steps(conn, tenant_id, execution_id)
        recorded = {s["seq"]: s for s in logs.with_trigger(execution, stored)}
        if definition is None:
            await self.fail(tenant_id, execution_id, lease, "workflow version is gone")
            return
        trigger = orjson.loads(execution["trigger_data"])
        user_view = {"userId": execution["user_id"], "username": execution["username"]}
        lookup = (
            self.credentials_for(tenant_id, execution["user_id"])
            if self.credentials_for
            else no_credentials
        )
        run = _Run(
            tenant_id,
            execution_id,
            lease,
            recorded,
            {"trigger": trigger, "blocks": {}, "user": user_view},
            RunContext(self.settings, self.http, execution_id, user_view, lookup),
            execution["wake_at"],
            execution["wait_started_at"],
            current=trigger,
            execution=execution,
        )
        try:
            stop = await self._run_blocks(run, definition.blocks)
        except Unavailable:
            raise
        except Exception as exc:  # the steps so far stay in the log, pending ones too
            log.exception("execution %s stopped by an internal error", execution_id)
            stop = Stop(message=f"internal error: {exc!r}")
        if stop is None:
            await self._end(run, "succeeded", None, None)
        elif not stop.halt:
            await self._end(run, "failed", stop.block, stop.message)

    async def run_or_fail(
        self,
        tenant_id: str,
        execution_id: str,
        lease: str,
        taken: tuple[Row, Sequence[Row]] | None = None,
    ) -> None:
        """`run`, what a worker calls: an unexpected error ends the execution as failed,
        with the error in its log. `Unavailable` (the database) is raised: the execution
        is left as it was, to resume after its last finished step."""
        try:
            await self.run(tenant_id, execution_id, lease, taken)
        except Unavailable:
            log.warning("database unreachable while running execution %s", execution_id)
            raise
        except Exception as exc:
            log.exception("execution %s stopped by an internal error", execution_id)
            await self.fail(tenant_id, execution_id, lease, f"internal error: {exc!r}")

    async def fail(self, tenant_id: str, execution_id: str, lease: str, message: str) -> None:
        """End a running execution as failed, outside of any block."""
        await self._finish(tenant_id, execution_id, lease, "failed", None, message)

    async def _run_blocks(self, run: _Run, blocks: Sequence[Block]) -> Stop | None:
        for block in blocks:
            if run.call_pending and not await self._flush(run):
                return Stop(halt=True)  # the execution was ended or erased meanwhile
            if block.connector == "branch":
                stop = await self._branch(run, block)
            elif block.connector == "loop":
                stop = await self._loop(run, block)
            elif block.connector == "delay":
                stop = await self._delay(run, block)
            else:
                stop = await self._step(run, block)
            if stop is not None:
                return stop
        return None

    async def _step(self, run: _Run, block: Block) -> Stop | None:
        """Run one connector block (or replay its recorded step)."""
        seq = run.next_seq()
        step = run.recorded.get(seq)
        if step is None:
            if self._pure(block):
                step = await self._call(run, seq, block)
            else:
                kept = _KeptSteps(self, run)
                try:
                    step = await self._call(run, seq, block, kept.written)
                finally:
                    kept.abandon()
        return self._after(run, block, step)

    def _pure(self, block: Block) -> bool:
        """Whether the block's step may wait to be written with the next (see `_record`)."""
        if block.connector in ("branch", "loop"):
            return True  # only expressions; a loop's body blocks decide for themselves
        connector = self.connectors.get(block.connector)
        return connector is not None and connector.pure

    async def _flush(
        self, run: _Run, step: dict[str, Any] | None = None, *, waited: bool = False
    ) -> bool:
        """Write the pending steps, and `step` after them, in one transaction; False if
        the execution no longer runs under the lease. `waited`: `step` is a delay's,
        which also clears the execution's wait.

        Called before a block starts after a call, before a delay's wait, while a call
        runs once the kept steps have waited their bound (`_KeptSteps`), so that a live
        log shows what led to it, and for every step that is not kept pending.
        """
        steps = [*run.pending, *([step] if step is not None else [])]
        if not steps:
            return True
        async with self.db.write_inline(single=len(steps) == 1 and not waited) as conn:
            for written in steps:
                if not await queue.record_step(conn, run.lease, **written):
                    return False
            if waited:
                await queue.clear_wait(conn, run.tenant_id, run.execution_id)
        run.written.extend(steps)
        run.pending.clear()
        run.call_pending = False
        return True

    def _after(self, run: _Run, block: Block, step: Mapping[Any, Any] | None) -> Stop | None:
        """Make a block's step visible to the blocks after it; stop where it must."""
        if step is None:  # the execution was erased or ended elsewhere while it ran
            return Stop(halt=True)
        outputs = orjson.loads(step["data"])
        # A loop's value is always the list of its iterations' results, even of one.
        value = (
            [i["json"] for i in outputs[0]] if block.connector == "loop" else _block_value(outputs)
        )
        run.context["blocks"][block.name] = value
        run.current = value
        if step["error"] is not None and block.on_error == "stop":
            return Stop(block.name, orjson.loads(step["error"])["message"])
        return None

    async def _branch(self, run: _Run, block: Block) -> Stop | None:
        seq = run.next_seq()
        step = run.recorded.get(seq)
        if step is None:
            started = now_ms()
            taken, conditions, error = len(block.branches) - 1, [], None
            try:
                for index, path in enumerate(block.config["paths"]):
                    holds = _truthy(self._resolve(path["when"], run))
                    conditions.append({"when": holds})
                    if holds:
                        taken = index
                        break
            except ExpressionError as exc:
                error = str(exc)
            outputs: list[list[Item]] = [[] for _ in block.branches]
            if error is None:
                outputs[taken] = [{"json": run.current}]
            step = await self._record(
                run, seq, block, started, outputs, {"paths": conditions}, error, 1
            )
        stop = self._after(run, block, step)
        if stop is not None or step is None or step["error"] is not None:
            return stop
        data = orjson.loads(step["data"])
        taken = next((i for i, output in enumerate(data) if output), len(data) - 1)
        return await self._run_blocks(run, block.branches[taken])

    async def _loop(self, run: _Run, block: Block) -> Stop | None:
        seq = run.next_seq()
        started = now_ms()
        if seq + 1 in run.recorded:  # resuming inside the loop: it began back then
            started = run.recorded[seq + 1]["started_at"]
        error = None
        elements: list[Any] = []
        try:
            over = self._resolve(block.config["over"], run)
            elements = over if isinstance(over, list) else ([] if over is None else [over])
        except ExpressionError as exc:
            error = str(exc)
        results: list[Item] = []
        outer_item = run.context.get("item")
        for index, element in enumerate(elements if error is None else []):
            run.context["item"] = element
            run.iteration.append(index)
            stop = await self._run_blocks(run, block.body)
            run.iteration.pop()
            if stop is not None:
                return stop
            results.append({"json": run.current})
        if outer_item is None:
            run.context.pop("item", None)
        else:
            run.context["item"] = outer_item
        # The loop's step is recorded after its body's, but its seq was taken first: the
        # log lists steps in the order they started, and replays number them the same.
        step = run.recorded.get(seq) or await self._record(
            run, seq, block, started, [results], {"over": elements}, error, 1
        )
        return self._after(run, block, step)

    async def _delay(self, run: _Run, block: Block) -> Stop | None:
        seq = run.next_seq()
        step = run.recorded.get(seq)
        if step is None:
            try:
                seconds = float(self._resolve(block.config["seconds"], run))
            except (ExpressionError, TypeError, ValueError) as exc:
                return self._after(
                    run,
                    block,
                    await self._record(run, seq, block, now_ms(), [[]], {}, f"{exc}", 1),
                )
            now = now_ms()
            if run.wake_at is None and seconds > 0:
                if await self._flush(run):
                    await self._park(run, now + int(seconds * 1000), now)
                return Stop(halt=True)
            started = run.wait_started_at or now
            step = await self._record(
                run, seq, block, started, [[{"json": run.current}]], {"seconds": seconds}, None, 1
            )
            run.wake_at = run.wait_started_at = None
        return self._after(run, block, step)

    async def _park(self, run: _Run, wake_at: int, since: int) -> None:
        """Put the execution back in the queue until `wake_at`, holding no worker."""
        async with self.db.write() as conn:
            parked = await queue.park(
                conn, run.tenant_id, run.execution_id, run.lease, wake_at=wake_at, since=since
            )
        if parked:
            self.on_park(wake_at)

    def _resolve(self, value: Any, run: _Run) -> Any:
        return resolve(value, run.context, self.settings.expression_timeout_ms)

    async def _call(
        self,
        run: _Run,
        seq: int,
        block: Block,
        kept_written: Callable[[], Awaitable[bool]] | None = None,
    ) -> Mapping[Any, Any] | None:
        """Run a connector block, with its retries, and record the step; `kept_written`:
        whether the steps kept before it were written (`_KeptSteps`), awaited first."""
        started = now_ms()
        resolved: Any = block.config
        outputs: list[list[Item]] = [[]]
        error: str | None = None
        errors: list[str] = []
        app_actions = 0
        attempt = 0
        connector = self.connectors.get(block.connector)
        while True:
            attempt += 1
            try:
                if connector is None:
                    raise BlockFailed(f"connector {block.connector!r} is not installed")
                resolved = self._resolve(block.config, run)
                result: BlockResult = await connector.run(
                    connector.parse(resolved), run.run_context
                )
                outputs, error = result.outputs, None
                app_actions += result.app_actions
            except ExpressionError as exc:
                error = str(exc)
            except BlockFailed as exc:
                app_actions += exc.app_actions
                outputs, error = [exc.items], exc.message
                if exc.retryable and attempt < block.retry.attempts:
                    errors.append(exc.message)
                    await asyncio.sleep(_backoff_ms(block, attempt, exc.retry_after_ms) / 1000)
                    continue
            except Exception as exc:
                log.exception(
                    "connector %s failed in execution %s", block.connector, run.execution_id
                )
                error = f"internal error in connector {block.connector!r}: {exc!r}"
            break
        shown = connector.redact(resolved) if connector else resolved
        meta = {"attempts": attempt, "lastError": errors[-1]} if errors else {}
        if kept_written is not None and not await kept_written():
            return None  # the execution was ended or erased meanwhile
        return await self._record(
            run, seq, block, started, outputs, shown, error, attempt, meta, app_actions
        )

    async def _record(
        self,
        run: _Run,
        seq: int,
        block: Block,
        started: int,
        outputs: list[list[Item]],
        inputs: Any,
        error: str | None,
        attempts: int,
        meta: Mapping[str, Any] | None = None,
        app_actions: int = 0,
    ) -> Mapping[Any, Any] | None:
        """Write one finished step durably; None if the execution is no longer running."""
        meta = dict(meta or {})
        if run.iteration:
            meta["iteration"] = run.iteration[-1]
        try:
            data, inputs_text = _items_text(outputs), _text(inputs)
        except TypeError as exc:  # e.g. an integer beyond 64 bits from an expression
            error = error or f"the block's output or inputs cannot be stored as JSON: {exc}"
            connector = self.connectors.get(block.connector)
            unresolved = connector.redact(block.config) if connector else block.config
            data, inputs_text = _items_text([[]]), _text(unresolved)
        if error is not None and block.on_error == "continue":
            data = _items_text([[{"json": {"error": {"message": error}}}]])
        secrets = run.run_context.secrets
        step = {
            "tenant_id": run.tenant_id,
            "execution_id": run.execution_id,
            "seq": seq,
            "connector_id": block.id,
            "block_name": block.name,
            "started_at": started,
            "stopped_at": now_ms(),
            "data": scrub(data, secrets),
            "inputs": scrub(inputs_text, secrets),
            "error": None
            if error is None
            else scrub(_text({"message": error, "attempts": attempts}), secrets),
            "meta": scrub(_text(meta), secrets) if meta else None,
            "app_actions": app_actions,
        }
        # A pure block's step waits to be written with the next step written, or with the
        # execution's end: a crash before then runs it again, which nobody could see. So a
        # chain of pure blocks costs one write, not one each; the wait is bounded, so a
        # long chain still shows in the live log.
        clock = asyncio.get_running_loop().time()
        if not run.pending:
            run.pending_since = clock
        if self._pure(block):
            if len(run.pending) < _MAX_PENDING and clock - run.pending_since < _MAX_PENDING_SECONDS:
                run.pending.append(step)
                return step
        elif block.connector != "delay":
            # A call's step is durable before the next block starts (`_run_blocks` writes
            # it then); when no block follows, it goes with the execution's end, in the
            # same commit. Either way a crash before that commit runs the call again, as
            # a crash before its own commit would: one write saved on every run whose
            # last block calls out.
            run.pending.append(step)
            run.call_pending = True
            return step
        return step if await self._flush(run, step, waited=block.connector == "delay") else None

    async def _definition(
        self, conn: q.Reader, tenant_id: str, workflow_id: str, version: int
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

    async def _end(
        self, run: _Run, status: str, error_block: str | None, error_message: str | None
    ) -> None:
        """Write the end of the execution `run` ran and its whole log document, in one
        statement, if it still runs under the run's lease.

        The log is built from the steps in hand: the ones recorded when the run began, the
        ones it wrote, and the pending ones, which go straight into the log. While the
        lease holds, no one else writes a step of it (`queue.record_step`).
        """
        steps = sorted(
            [*run.recorded.values(), *run.written, *run.pending], key=lambda step: int(step["seq"])
        )
        ended = {**run.execution, "status": status, "stopped_at": now_ms()}
        log = self._log(run.tenant_id, ended, steps)
        async with self.db.write_inline(single=True) as conn:
            done = await queue.end(
                conn,
                run.tenant_id,
                run.execution_id,
                run.lease,
                status=status,
                stopped_at=ended["stopped_at"],
                error_block=error_block,
                error_message=error_message,
                app_actions=sum(step["app_actions"] for step in steps),
                log=log,
                job=run.execution.get("job_id"),
            )
        if done.job is not None:
            self.on_job_done(done.job)

    async def _finish(
        self,
        tenant_id: str,
        execution_id: str,
        lease: str,
        status: str,
        error_block: str | None,
        error_message: str | None,
    ) -> None:
        """Write the execution's end and its whole log document, in one transaction, from
        the steps recorded (a run that failed outside of its blocks has no steps in hand).
        """
        async with self.db.write_inline() as conn:
            execution = await queue.holding(conn, tenant_id, execution_id, lease)
            if execution is None:
                return
            steps = logs.with_trigger(
                execution, await q.execution_steps(conn, tenant_id, execution_id)
            )
            ended = {**execution, "status": status, "stopped_at": now_ms()}
            done = await queue.end(
                conn,
                tenant_id,
                execution_id,
                lease,
                status=status,
                stopped_at=ended["stopped_at"],
                error_block=error_block,
                error_message=error_message,
                app_actions=sum(s["app_actions"] for s in steps),
                log=self._log(tenant_id, ended, steps),
                job=execution.get("job_id"),
            )
        if done.job is not None:
            self.on_job_done(done.job)

    def _log(
        self, tenant_id: str, ended: Mapping[str, Any], steps: Sequence[Mapping[str, Any]]
    ) -> bytes:
        """The ended execution's log document, compressed as it is stored."""
        return codec.pack(
            orjson.dumps(logs.render(ended, steps)),
            self.dictionaries.current(tenant_id) if self.dictionaries else None,
        )


class _KeptSteps:
    """The steps of pure blocks kept unwritten when a block that calls out starts: they are
    written while the call runs once they have waited `_MAX_PENDING_SECONDS`, so a live log
    shows what led to a long call. A call that returns sooner has its step kept with them,
    and they are all written in one go (before the next block starts, or with the end):
    one write where there were two.

    A crash in the meantime runs the pure blocks again, which nobody saw, and the call
    again, as a crash before the call's own write always did.
    """

    def __init__(self, engine: Engine, run: _Run) -> None:
        self._writing: asyncio.Task[bool] | None = None
        self._timer: asyncio.TimerHandle | None = None
        if run.pending:
            loop = asyncio.get_running_loop()
            waited = loop.time() - run.pending_since
            self._timer = loop.call_later(
                max(0.0, _MAX_PENDING_SECONDS - waited), self._write, engine, run
            )

    def _write(self, engine: Engine, run: _Run) -> None:
        self._writing = asyncio.create_task(engine._flush(run))

    async def written(self) -> bool:
        """Once the call returned: whether the execution still runs under the lease, the
        kept steps written if their time came (else they stay kept, to go with the call's)."""
        if self._timer is not None:
            self._timer.cancel()
        return True if self._writing is None else await self._writing

    def abandon(self) -> None:
        """The call was interrupted: write nothing more; a write under way ends by itself
        (all or nothing), and its outcome is not waited for."""
        if self._timer is not None:
            self._timer.cancel()
        if self._writing is not None and not self._writing.done():
            self._writing.add_done_callback(_retrieved)


def _retrieved(task: asyncio.Task[bool]) -> None:
    if not task.cancelled():
        task.exception()


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


def _truthy(value: Any) -> bool:
    """JSONata's boolean cast: empty strings, arrays and objects, 0 and null are false."""
    return bool(value)


def _backoff_ms(block: Block, attempt: int, retry_after_ms: int | None) -> float:
    delay = float(block.retry.delay_ms)
    if block.retry.backoff == "exponential":
        delay *= 2 ** (attempt - 1)
    if retry_after_ms is not None:
        delay = max(delay, retry_after_ms)
    return min(delay, _MAX_BACKOFF_MS)

"""Workflow definitions: parsed and validated completely before they are stored.

Every problem is reported at once, each with its JSON path (`blocks[0].config.url`).
The format is public API: docs/workflows.md describes it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from croniter import croniter

from solder.connectors import Connector
from solder.errors import InvalidDefinition, InvalidRequest
from solder.expressions import ExpressionError, parse_template, referenced_blocks, templates_in

TRIGGER_TYPES = ("webhook", "event", "schedule")
ON_ERROR = ("stop", "continue")
BACKOFF = ("fixed", "exponential")
_BLOCK_KEYS = {"id", "name", "connector", "config", "retry", "onError", "blocks"}
# Names expressions use for other things than blocks.
_RESERVED_NAMES = {"trigger", "item", "user"}
_ROOT_KEYS = {"name", "description", "trigger", "blocks"}
_MAX_ATTEMPTS = 10
# What Solder can store and serve as JSON: 64-bit integers, and nesting well within the
# depth its serializer accepts (a log wraps a value in a few more levels).
_INT_RANGE = (-(2**63), 2**64 - 1)
MAX_DEPTH = 100


@dataclass(frozen=True, slots=True)
class Retry:
    attempts: int = 1
    backoff: str = "exponential"
    delay_ms: int = 1000


@dataclass(frozen=True, slots=True)
class Block:
    id: str
    name: str
    connector: str
    config: Mapping[str, Any]
    retry: Retry
    on_error: str
    body: tuple[Block, ...] = ()
    """A loop's blocks, run once per element."""
    branches: tuple[tuple[Block, ...], ...] = ()
    """A branch's blocks: one tuple per path, then the `else` blocks."""


@dataclass(frozen=True, slots=True)
class Trigger:
    id: str
    type: str
    event: str | None = None
    cron: str | None = None


def walk(blocks: Iterable[Block]) -> Iterator[Block]:
    """Every block, nested ones included, in document order."""
    for block in blocks:
        yield block
        yield from walk(block.body)
        for branch in block.branches:
            yield from walk(branch)


@dataclass(frozen=True, slots=True)
class Definition:
    name: str
    trigger: Trigger
    blocks: tuple[Block, ...]
    document: Mapping[str, Any]
    """The definition as stored and served, with every id filled in."""

    def block_ids(self) -> dict[str, str]:
        return {block.id: block.name for block in walk(self.blocks)}


def parse(
    raw: Any, connectors: Mapping[str, Connector], previous: Definition | None = None
) -> Definition:
    """Validate `raw` completely and return it as a Definition, or raise InvalidDefinition.

    Blocks without an `id` keep the id of the block of the same name in `previous`.
    """
    if not isinstance(raw, dict):
        raise InvalidDefinition([("$", "a workflow definition must be a JSON object")])
    problems = value_problems(raw, "")
    for key in sorted(set(raw) - _ROOT_KEYS):
        problems.append((key, "unknown key"))
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        problems.append(("name", "required, a non-empty string"))
    elif len(name) > 255:
        problems.append(("name", "at most 255 characters"))
    trigger = _trigger(raw.get("trigger"), problems, previous)
    blocks, _ = _Walker(connectors, problems, previous).blocks(raw.get("blocks"), "blocks", set())
    if problems:
        raise InvalidDefinition(problems)
    document: dict[str, Any] = {
        "name": name,
        "trigger": _trigger_document(trigger),
        "blocks": [_block_document(block) for block in blocks],
    }
    if "description" in raw:
        document["description"] = raw["description"]
    assert isinstance(name, str)
    return Definition(name, trigger, tuple(blocks), document)


def value_problems(value: Any, path: str, depth: int = 0) -> list[tuple[str, str]]:
    """Where `value` holds JSON Solder cannot store: integers beyond 64 bits, deep nesting."""
    where = path or "$"
    if depth > MAX_DEPTH:
        return [(where, f"nested deeper than {MAX_DEPTH} levels")]
    if _is_int(value) and not _INT_RANGE[0] <= value <= _INT_RANGE[1]:
        return [(where, "integer out of the 64-bit range")]
    if isinstance(value, dict):
        return [
            problem
            for key, item in value.items()
            for problem in value_problems(item, f"{path}.{key}" if path else key, depth + 1)
        ]
    if isinstance(value, list):
        return [
            problem
            for index, item in enumerate(value)
            for problem in value_problems(item, f"{path}[{index}]", depth + 1)
        ]
    return []


def check_payload(value: Any, path: str) -> None:
    """Refuse a trigger payload Solder could not store, naming where the problem is."""
    problems = value_problems(value, path)
    if problems:
        raise InvalidRequest("; ".join(f"{where}: {message}" for where, message in problems))


def from_document(document: Mapping[str, Any], connectors: Mapping[str, Connector]) -> Definition:
    """A stored (already valid) definition."""
    return parse(dict(document), connectors)


def _trigger(raw: Any, problems: list[tuple[str, str]], previous: Definition | None) -> Trigger:
    if not isinstance(raw, dict):
        problems.append(("trigger", 'required, an object such as {"type": "webhook"}'))
        return Trigger(str(uuid.uuid4()), "webhook")
    kind = raw.get("type")
    for key in sorted(set(raw) - {"id", "type", "event", "cron"}):
        problems.append((f"trigger.{key}", "unknown key"))
    for key, owner in (("event", "event"), ("cron", "schedule")):
        if key in raw and kind != owner:
            problems.append((f"trigger.{key}", f"only {owner} triggers have {key!r}"))
    if kind not in TRIGGER_TYPES:
        problems.append(("trigger.type", f"must be one of {', '.join(TRIGGER_TYPES)}"))
    event = raw.get("event")
    if kind == "event" and (not isinstance(event, str) or not event.strip() or len(event) > 255):
        problems.append(("trigger.event", "required for event triggers: the event's name"))
    cron = raw.get("cron")
    if kind == "schedule" and not (isinstance(cron, str) and croniter.is_valid(cron)):
        problems.append(
            ("trigger.cron", "required for schedule triggers: a cron expression, e.g. '0 9 * * 1'")
        )
    default_id = previous.trigger.id if previous else str(uuid.uuid4())
    trigger_id = _uuid(raw.get("id"), "trigger.id", problems) or default_id
    return Trigger(
        trigger_id,
        kind if isinstance(kind, str) else "webhook",
        event if kind == "event" and isinstance(event, str) else None,
        cron if kind == "schedule" and isinstance(cron, str) else None,
    )


class _Walker:
    """Walks a list of blocks and the lists nested in it, collecting every problem."""

    def __init__(
        self,
        connectors: Mapping[str, Connector],
        problems: list[tuple[str, str]],
        previous: Definition | None,
    ) -> None:
        self.connectors = connectors
        self.problems = problems
        self.previous_ids = {b.name: b.id for b in walk(previous.blocks)} if previous else {}
        self.names: set[str] = set()
        self.ids: set[str] = set()

    def blocks(self, raw: Any, path: str, visible: set[str]) -> tuple[list[Block], set[str]]:
        """The blocks of a list, and the names of all blocks in it (nested ones too).

        `visible` is the names an expression of the first block may refer to; each block
        adds its own (and its nested blocks') for the blocks after it.
        """
        if raw is None:
            return [], set()
        if not isinstance(raw, list):
            self.problems.append((path, "must be a list of blocks"))
            return [], set()
        blocks: list[Block] = []
        seen = set(visible)
        defined: set[str] = set()
        for index, entry in enumerate(raw):
            block = self.block(entry, f"{path}[{index}]", seen)
            if block is not None:
                blocks.append(block)
                inside = {b.name for b in walk([block])}
                seen |= inside
                defined |= inside
        return blocks, defined

    def block(self, entry: Any, path: str, visible: set[str]) -> Block | None:
        if not isinstance(entry, dict):
            self.problems.append((path, "must be an object"))
            return None
        for key in sorted(set(entry) - _BLOCK_KEYS):
            self.problems.append((f"{path}.{key}", "unknown key"))
        name = self._name(entry.get("name"), path)
        block_id = _uuid(entry.get("id"), f"{path}.id", self.problems)
        block_id = block_id or self.previous_ids.get(name) or str(uuid.uuid4())
        if block_id in self.ids:
            self.problems.append((f"{path}.id", f"duplicate block id {block_id}"))
        self.ids.add(block_id)
        connector_name = entry.get("connector")
        config = entry.get("config", {})
        if not isinstance(config, dict):
            self.problems.append((f"{path}.config", "must be an object"))
            config = {}
        body: list[Block] = []
        branches: list[list[Block]] = []
        if connector_name == "branch":
            config, branches = self._branch(config, f"{path}.config", visible)
        if connector_name == "loop":
            body, _ = self.blocks(entry.get("blocks", []), f"{path}.blocks", visible)
            if not entry.get("blocks"):
                self.problems.append((f"{path}.blocks", "a loop needs blocks to run"))
        elif "blocks" in entry:
            self.problems.append((f"{path}.blocks", "only loop blocks hold blocks"))
        connector = self.connectors.get(connector_name) if isinstance(connector_name, str) else None
        if connector is None:
            known = ", ".join(sorted(self.connectors))
            self.problems.append((f"{path}.connector", f"unknown connector; known: {known}"))
        else:
            self.problems.extend(
                (f"{path}.config{loc}", msg) for loc, msg in connector.check(config)
            )
        _check_expressions(config, f"{path}.config", visible, self.problems)
        return Block(
            id=block_id,
            name=name,
            connector=connector_name if isinstance(connector_name, str) else "",
            config=config,
            retry=_retry(entry.get("retry"), f"{path}.retry", self.problems),
            on_error=_on_error(entry.get("onError", "stop"), f"{path}.onError", self.problems),
            body=tuple(body),
            branches=tuple(tuple(b) for b in branches),
        )

    def _name(self, raw: Any, path: str) -> str:
        if not isinstance(raw, str) or not raw.strip():
            self.problems.append((f"{path}.name", "required, a non-empty string"))
            return f"#{path}"
        if raw in self.names:
            self.problems.append((f"{path}.name", f"duplicate block name {raw!r}"))
        elif raw in _RESERVED_NAMES:
            self.problems.append((f"{path}.name", f"{raw!r} is reserved"))
        self.names.add(raw)
        return raw

    def _branch(
        self, config: dict[str, Any], path: str, visible: set[str]
    ) -> tuple[dict[str, Any], list[list[Block]]]:
        """The branch's own configuration (conditions only) and its paths' blocks, else last."""
        own: dict[str, Any] = {k: v for k, v in config.items() if k != "else"}
        branches: list[list[Block]] = []
        paths = config.get("paths")
        if isinstance(paths, list):
            own["paths"] = []
            for index, entry in enumerate(paths):
                where = f"{path}.paths[{index}]"
                if isinstance(entry, dict):
                    own["paths"].append({k: v for k, v in entry.items() if k != "blocks"})
                    blocks, _ = self.blocks(entry.get("blocks", []), f"{where}.blocks", visible)
                else:
                    own["paths"].append(entry)
                    blocks = []
                branches.append(blocks)
        otherwise, _ = self.blocks(config.get("else", []), f"{path}.else", visible)
        branches.append(otherwise)
        return own, branches


def _check_expressions(
    config: Any, path: str, names_before: set[str], problems: list[tuple[str, str]]
) -> None:
    for where, text in templates_in(config, path):
        try:
            template = parse_template(text)
        except ExpressionError as exc:
            problems.append((where, str(exc)))
            continue
        for expression in template.expressions:
            for ref in sorted(referenced_blocks(expression) - names_before):
                problems.append(
                    (where, f"refers to block {ref!r}, which does not run before this block")
                )


def _retry(raw: Any, path: str, problems: list[tuple[str, str]]) -> Retry:
    if raw is None:
        return Retry()
    if not isinstance(raw, dict):
        problems.append((path, "must be an object"))
        return Retry()
    for key in sorted(set(raw) - {"attempts", "backoff", "delayMs"}):
        problems.append((f"{path}.{key}", "unknown key"))
    attempts = raw.get("attempts", 1)
    if not _is_int(attempts) or not 1 <= attempts <= _MAX_ATTEMPTS:
        problems.append((f"{path}.attempts", f"must be an integer from 1 to {_MAX_ATTEMPTS}"))
        attempts = 1
    backoff = raw.get("backoff", "exponential")
    if backoff not in BACKOFF:
        problems.append((f"{path}.backoff", "must be fixed or exponential"))
    delay = raw.get("delayMs", 1000)
    if not _is_int(delay) or not 0 <= delay <= 3_600_000:
        problems.append((f"{path}.delayMs", "must be an integer from 0 to 3600000"))
        delay = 1000
    return Retry(attempts, backoff if backoff in BACKOFF else "exponential", delay)


def _on_error(raw: Any, path: str, problems: list[tuple[str, str]]) -> str:
    if raw not in ON_ERROR:
        problems.append((path, "must be stop or continue"))
        return "stop"
    return str(raw)


def _uuid(raw: Any, path: str, problems: list[tuple[str, str]]) -> str | None:
    if raw is None:
        return None
    try:
        if isinstance(raw, str):
            return str(uuid.UUID(raw))
    except ValueError:
        pass
    problems.append((path, "must be a UUID"))
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _trigger_document(trigger: Trigger) -> dict[str, Any]:
    document = {"id": trigger.id, "type": trigger.type}
    if trigger.event is not None:
        document["event"] = trigger.event
    if trigger.cron is not None:
        document["cron"] = trigger.cron
    return document


def _block_document(block: Block) -> dict[str, Any]:
    config = dict(block.config)
    if block.connector == "branch":
        *paths, otherwise = block.branches
        config["paths"] = [
            {**condition, "blocks": [_block_document(b) for b in blocks]}
            for condition, blocks in zip(config.get("paths", []), paths, strict=False)
        ]
        config["else"] = [_block_document(b) for b in otherwise]
    document: dict[str, Any] = {
        "id": block.id,
        "name": block.name,
        "connector": block.connector,
        "config": config,
        "onError": block.on_error,
    }
    if block.connector == "loop":
        document["blocks"] = [_block_document(b) for b in block.body]
    if block.retry != Retry():
        document["retry"] = {
            "attempts": block.retry.attempts,
            "backoff": block.retry.backoff,
            "delayMs": block.retry.delay_ms,
        }
    return document

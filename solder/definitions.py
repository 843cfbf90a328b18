"""Workflow definitions: parsed and validated completely before they are stored.

Every problem is reported at once, each with its JSON path (`blocks[0].config.url`).
The format is public API: docs/workflows.md describes it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from solder.connectors import Connector
from solder.errors import InvalidDefinition, InvalidRequest
from solder.expressions import ExpressionError, parse_template, referenced_blocks, templates_in

TRIGGER_TYPES = ("webhook",)
# Trigger types of the format that this version does not run yet.
LATER_TRIGGER_TYPES = ("event", "schedule")
ON_ERROR = ("stop", "continue")
BACKOFF = ("fixed", "exponential")
_BLOCK_KEYS = {"id", "name", "connector", "config", "retry", "onError"}
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


@dataclass(frozen=True, slots=True)
class Trigger:
    id: str
    type: str


@dataclass(frozen=True, slots=True)
class Definition:
    name: str
    trigger: Trigger
    blocks: tuple[Block, ...]
    document: Mapping[str, Any]
    """The definition as stored and served, with every id filled in."""

    def block_ids(self) -> dict[str, str]:
        return {block.id: block.name for block in self.blocks}


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
    blocks = _blocks(raw.get("blocks"), connectors, problems, previous)
    if problems:
        raise InvalidDefinition(problems)
    document: dict[str, Any] = {
        "name": name,
        "trigger": {"id": trigger.id, "type": trigger.type},
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
    if kind in LATER_TRIGGER_TYPES:
        problems.append(
            ("trigger.type", f"{kind!r} triggers are not available in this version yet")
        )
    elif kind not in TRIGGER_TYPES:
        problems.append(("trigger.type", f"must be one of {', '.join(TRIGGER_TYPES)}"))
    default_id = previous.trigger.id if previous else str(uuid.uuid4())
    trigger_id = _uuid(raw.get("id"), "trigger.id", problems) or default_id
    return Trigger(trigger_id, kind if isinstance(kind, str) else "webhook")


def _blocks(
    raw: Any,
    connectors: Mapping[str, Connector],
    problems: list[tuple[str, str]],
    previous: Definition | None,
) -> list[Block]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        problems.append(("blocks", "must be a list of blocks"))
        return []
    previous_ids = {b.name: b.id for b in previous.blocks} if previous else {}
    blocks: list[Block] = []
    names_before: set[str] = set()
    seen_ids: set[str] = set()
    for index, entry in enumerate(raw):
        path = f"blocks[{index}]"
        if not isinstance(entry, dict):
            problems.append((path, "must be an object"))
            continue
        for key in sorted(set(entry) - _BLOCK_KEYS):
            problems.append((f"{path}.{key}", "unknown key"))
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            problems.append((f"{path}.name", "required, a non-empty string"))
            name = f"#{index}"
        elif name in names_before:
            problems.append((f"{path}.name", f"duplicate block name {name!r}"))
        elif name == "trigger":
            problems.append((f"{path}.name", "'trigger' is reserved for the trigger"))
        block_id = _uuid(entry.get("id"), f"{path}.id", problems)
        block_id = block_id or previous_ids.get(name) or str(uuid.uuid4())
        if block_id in seen_ids:
            problems.append((f"{path}.id", f"duplicate block id {block_id}"))
        seen_ids.add(block_id)
        connector_name = entry.get("connector")
        config = entry.get("config", {})
        if not isinstance(config, dict):
            problems.append((f"{path}.config", "must be an object"))
            config = {}
        connector = connectors.get(connector_name) if isinstance(connector_name, str) else None
        if connector is None:
            known = ", ".join(sorted(connectors))
            problems.append((f"{path}.connector", f"unknown connector; known: {known}"))
        else:
            problems.extend((f"{path}.config{loc}", msg) for loc, msg in connector.check(config))
        _check_expressions(config, f"{path}.config", names_before, problems)
        blocks.append(
            Block(
                id=block_id,
                name=name,
                connector=connector_name if isinstance(connector_name, str) else "",
                config=config,
                retry=_retry(entry.get("retry"), f"{path}.retry", problems),
                on_error=_on_error(entry.get("onError", "stop"), f"{path}.onError", problems),
            )
        )
        names_before.add(name)
    return blocks


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


def _block_document(block: Block) -> dict[str, Any]:
    document: dict[str, Any] = {
        "id": block.id,
        "name": block.name,
        "connector": block.connector,
        "config": block.config,
        "onError": block.on_error,
    }
    if block.retry != Retry():
        document["retry"] = {
            "attempts": block.retry.attempts,
            "backoff": block.retry.backoff,
            "delayMs": block.retry.delay_ms,
        }
    return document

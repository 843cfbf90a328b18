"""An execution's log, in the exact shape of the Alloy logs API.

The shape is pinned by contract/seed-logs-response.json (tests/test_golden_log.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from solder.ids import iso_ms, name_uuid
from solder.store.schema import ENDED

# The namespace of the trigger items' ids (version 5 UUIDs of their execution's id).
_TRIGGER_ITEMS = uuid.UUID("5d1de7a2-4f0e-4c4b-9a53-7c0e6d2b1f38")


def trigger_step(execution: Mapping[Any, Any]) -> dict[str, Any]:
    """An unfinished execution's first step, its trigger's, as its row gives it: the
    payload as one item, at the execution's start.

    It is not stored: the row holds the trigger (`trigger_id`, `trigger_data`) until the
    execution ends, and its log holds it after. The item's id comes from the execution's,
    so that every read of the log shows the same one.
    """
    return {
        "tenant_id": execution["tenant_id"],
        "execution_id": execution["id"],
        "seq": 0,
        "connector_id": execution["trigger_id"],
        "block_name": "trigger",
        "started_at": execution["started_at"],
        "stopped_at": execution["started_at"],
        "data": f'[[{{"json":{execution["trigger_data"]},'
        f'"id":"{name_uuid(_TRIGGER_ITEMS, execution["id"])}"}}]]',
        "inputs": "{}",
        "error": None,
        "meta": None,
        "app_actions": 0,
    }


def with_trigger(
    execution: Mapping[Any, Any], steps: Sequence[Mapping[Any, Any]]
) -> list[Mapping[Any, Any]]:
    """An unfinished execution's stored `steps` (in order) with its trigger's first.

    Executions queued by an earlier Solder stored their trigger's step (seq 0): theirs
    is kept.
    """
    if steps and steps[0]["seq"] == 0:
        return list(steps)
    return [trigger_step(execution), *steps]


def render(execution: Mapping[Any, Any], steps: Iterable[Mapping[Any, Any]]) -> dict[str, Any]:
    """The log of one execution from its row and its recorded steps (in order)."""
    results: list[dict[str, Any]] = []
    inputs: list[dict[str, Any]] = []
    for step in steps:
        result: dict[str, Any] = {
            "startedAt": iso_ms(step["started_at"]),
            "stoppedAt": iso_ms(step["stopped_at"]),
            "data": orjson.loads(step["data"]),
            "connectorId": step["connector_id"],
        }
        if step["error"] is not None:
            result["error"] = orjson.loads(step["error"])
        if step.get("meta"):
            result.update(orjson.loads(step["meta"]))
        results.append(result)
        inputs.append({"connectorId": step["connector_id"], "data": orjson.loads(step["inputs"])})
    status = execution["status"]
    return {
        "executionId": execution["id"],
        "startedAt": iso_ms(execution["started_at"]),
        "stoppedAt": iso_ms(execution["stopped_at"]) if status in ENDED else None,
        "finished": status == "succeeded",
        "results": results,
        "inputs": inputs,
        # Additive fields, beyond the seed's shape.
        "status": status,
        "userId": execution["user_id"],
        "workflowVersion": execution["workflow_version"],
        "rerunOf": execution["rerun_of"],
    }


def page_document(logs: Iterable[bytes], next_cursor: str | None = None) -> bytes:
    """`{"data": [...], "nextCursor": ...}` spliced from pre-serialized log documents,
    without re-parsing them."""
    return b'{"data":[' + b",".join(logs) + b'],"nextCursor":' + orjson.dumps(next_cursor) + b"}"

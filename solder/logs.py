"""An execution's log, in the exact shape of the Alloy logs API.

The shape is pinned by contract/seed-logs-response.json (tests/test_golden_log.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from solder.ids import iso_ms

TERMINAL = ("succeeded", "failed", "canceled")


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
        "stoppedAt": iso_ms(execution["stopped_at"]) if status in TERMINAL else None,
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

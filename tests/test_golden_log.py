"""The log Solder returns has exactly the structure of the contract's example response."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Api
from tests.upstream import Reply, Upstream

SEED = Path(__file__).resolve().parents[2] / "shared" / "contract" / "seed-logs-response.json"
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
EXECUTION_ID = re.compile(r"^[A-Za-z0-9_-]{21}$")
TRIGGER_ID = "6ad63c40-1abc-4289-8287-c62ef8bb2003"
HTTP_BLOCK_ID = "ae331681-25a5-452c-8d21-884fada67437"


def seed() -> dict[str, Any]:
    if not SEED.exists():  # the contract lives beside the project: ../shared/contract
        raise AssertionError(f"golden fixture missing: {SEED}")
    data: dict[str, Any] = json.loads(SEED.read_text())
    return data


def assert_same_shape(ours: Any, golden: Any, path: str = "$") -> None:
    """Same keys (ours may add some), same nesting, same JSON types.

    Two places hold connector-specific data rather than structure: an item's `json`
    (the seed's is `{}` for the trigger and `null` for its Klaviyo block) with the extra
    keys a connector adds beside it (the seed's `profileId`), and an input's `data`.
    """
    if path.endswith(".json") or re.search(r"inputs\[\d+\]\.data$", path):
        return
    if golden is None:
        assert ours is None or isinstance(ours, str), f"{path}: null or a timestamp"
        return
    assert type(ours) is type(golden), f"{path}: {type(ours).__name__}, not {type(golden)}"
    if isinstance(golden, dict):
        is_item = "json" in golden and "id" in golden
        for key, value in golden.items():
            if is_item and key not in ("json", "id", "statusCode"):
                continue
            assert key in ours, f"{path}.{key} missing"
            assert_same_shape(ours[key], value, f"{path}.{key}")
    elif isinstance(golden, list):
        # Entries past the seed's (a third block) must have the shape of its first entry.
        assert golden, f"{path}: the seed has an empty list here"
        for index, entry in enumerate(ours):
            model = golden[index] if index < len(golden) else golden[0]
            assert_same_shape(entry, model, f"{path}[{index}]")


def profile_workflow(upstream: Upstream) -> dict[str, Any]:
    return {
        "name": "Sync new signups to Klaviyo",
        "trigger": {"id": TRIGGER_ID, "type": "webhook"},
        "blocks": [
            {
                "id": HTTP_BLOCK_ID,
                "name": "getProfile",
                "connector": "http",
                "config": {
                    "method": "GET",
                    "url": f"{upstream.base_url}/api/profiles/",
                    "query": {"filter": 'equals(email,"{{ trigger.email }}")'},
                },
            },
            {
                "name": "profileId",
                "connector": "transform",
                "config": {"expression": "{{ blocks.getProfile.data[0].id }}"},
            },
        ],
    }


def test_log_matches_the_seed_key_by_key(api: Api, upstream: Upstream) -> None:
    golden = seed()["data"][0]
    profile = golden["results"][1]["data"][0][0]["profileId"]
    upstream.route("/api/profiles/", Reply(200, {"data": [profile]}))
    user_id = api.create_user("sarah", "Sarah Mason")
    workflow_id = api.create_workflow(profile_workflow(upstream))
    api.activate(user_id, workflow_id)
    payload = {"email": "sarah.mason@klaviyo-demo.com"}
    execution_id = api.run(user_id, workflow_id, payload)

    log = api.wait_for(workflow_id, execution_id)

    assert_same_shape(log, golden)
    assert list(golden) == [k for k in log if k in golden], "seed keys in the seed's order"
    assert EXECUTION_ID.match(log["executionId"])
    for stamp in (log["startedAt"], log["stoppedAt"]):
        assert TIMESTAMP.match(stamp)
    assert log["finished"] is True
    trigger, http, transform = log["results"]
    assert trigger["connectorId"] == TRIGGER_ID
    assert trigger["data"] == [[{"json": payload, "id": trigger["data"][0][0]["id"]}]]
    assert http["connectorId"] == HTTP_BLOCK_ID
    item = http["data"][0][0]
    assert item["statusCode"] == 200
    assert item["json"] == {"data": [profile]}
    assert transform["data"][0][0]["json"] == profile["id"]
    for result in log["results"]:
        assert TIMESTAMP.match(result["startedAt"])
        assert TIMESTAMP.match(result["stoppedAt"])
        assert result["startedAt"] <= result["stoppedAt"]
        uuid.UUID(result["connectorId"])
        for output in result["data"]:
            for each in output:
                uuid.UUID(each["id"])
    assert log["startedAt"] <= trigger["startedAt"] <= http["startedAt"] <= log["stoppedAt"]
    assert log["inputs"][0] == {"connectorId": TRIGGER_ID, "data": {}}
    assert log["inputs"][1]["connectorId"] == HTTP_BLOCK_ID
    assert log["inputs"][1]["data"]["query"] == {
        "filter": 'equals(email,"sarah.mason@klaviyo-demo.com")'
    }
    assert log["inputs"][2]["data"] == {"expression": profile["id"]}
    assert upstream.requests[0].query == {
        "filter": ['equals(email,"sarah.mason@klaviyo-demo.com")']
    }


def test_the_seed_itself_passes_the_shape_check() -> None:
    golden = seed()["data"][0]
    assert_same_shape(golden, golden)


def test_shape_check_catches_a_renamed_key() -> None:
    golden = seed()["data"][0]
    renamed = {("stopped_at" if k == "stoppedAt" else k): v for k, v in golden.items()}
    with pytest.raises(AssertionError, match="stoppedAt"):
        assert_same_shape(renamed, golden)

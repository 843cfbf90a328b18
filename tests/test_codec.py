"""Stored log documents: compressed on write, served as the JSON they were."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from solder.store.codec import pack, unpack
from tests import databases
from tests.conftest import Api, Server

SEED = Path(__file__).resolve().parents[2] / "shared" / "contract" / "seed-logs-response.json"


def test_a_seed_log_is_stored_in_a_third_of_its_size_and_comes_back_whole() -> None:
    document = orjson.dumps(json.loads(SEED.read_text())["data"][0])
    stored = pack(document)
    assert len(stored) < len(document) / 3
    assert unpack(stored) == document


def test_logs_stored_before_compression_are_read_as_they_are() -> None:
    assert unpack(b'{"executionId":"x"}') == b'{"executionId":"x"}'


def test_a_log_in_an_unknown_format_is_an_error_that_says_so() -> None:
    with pytest.raises(ValueError, match="unknown format"):
        unpack(b"\x07whatever")


def test_finished_logs_are_stored_compressed_and_served_as_json(server: Server, api: Api) -> None:
    user_id, workflow_id = api.install(
        {
            "name": "Shout",
            "trigger": {"type": "webhook"},
            "blocks": [
                {"name": "up", "connector": "transform", "config": {"expression": "{{ trigger }}"}}
            ],
        }
    )
    payload = {"text": "the same words again " * 40}
    execution_id = api.run(user_id, workflow_id, payload)
    log = api.wait_for(workflow_id, execution_id)
    assert log["results"][1]["data"][0][0]["json"] == payload
    [(stored,)] = databases.rows(server.settings.data_dir, "SELECT log FROM executions")
    assert isinstance(stored, bytes)
    served = api.get(f"/workflows/{workflow_id}/logs").content
    assert len(stored) < len(served) / 4, "compressed at rest"
    assert b"the same words again" not in stored

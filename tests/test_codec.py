"""Stored log documents: compressed on write, served as the JSON they were."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import orjson
import pytest

from solder.errors import LogUnreadable
from solder.store import codec
from solder.store.codec import Dictionary, pack, unpack
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
    with pytest.raises(LogUnreadable, match="unknown format"):
        unpack(b"\x07whatever")


def seed_logs(count: int) -> list[bytes]:
    """The seed's log `count` times, each with its own execution id and timestamps."""
    template = SEED.read_text().split('"data": [', 1)[1].rsplit("]", 1)[0]
    return [
        orjson.dumps(
            json.loads(
                template.replace("uGmauA50FBlibba3JkPfB", f"execution{n:012d}").replace(
                    "17:57:42", f"17:{n // 60 % 60:02d}:{n % 60:02d}"
                )
            )
        )
        for n in range(count)
    ]


def test_a_trained_dictionary_stores_a_seed_log_in_a_tenth_and_gives_it_back_whole() -> None:
    logs = seed_logs(200)
    dictionary = Dictionary("tenant", 1, codec.train(logs[:150], 4096))
    for log in logs[150:]:
        stored = pack(log, dictionary)
        assert stored.startswith(b"\x02\x01")
        assert len(stored) < len(log) / 10
        assert unpack(stored, dictionary) == log
        assert codec.dictionary_id(stored) == 1


@pytest.mark.parametrize(
    ("dictionary_id", "prefix_bytes"),
    [(1, 2), (127, 2), (128, 3), (300, 3), (16_383, 3), (16_384, 4), (2**31, 6)],
)
def test_a_stored_log_names_its_dictionary_in_a_varint(
    dictionary_id: int, prefix_bytes: int
) -> None:
    logs = seed_logs(100)
    dictionary = Dictionary("tenant", dictionary_id, codec.train(logs, 2048))
    stored = pack(logs[0], dictionary)
    assert codec.dictionary_id(stored) == dictionary_id
    assert stored.startswith(codec.prefix(dictionary_id))
    assert len(codec.prefix(dictionary_id)) == prefix_bytes
    assert unpack(stored, dictionary) == logs[0]


def test_a_log_read_without_its_dictionary_is_an_error_that_names_it() -> None:
    logs = seed_logs(100)
    seven = Dictionary("tenant", 7, codec.train(logs, 2048))
    stored = pack(logs[0], seven)
    with pytest.raises(LogUnreadable, match="compressed with dictionary 7 of its tenant"):
        unpack(stored)
    with pytest.raises(LogUnreadable, match="dictionary 7"):
        unpack(stored, Dictionary("tenant", 8, seven.content))
    assert codec.dictionary_id(pack(logs[0])) is None, "the skeleton's need none"


def test_logs_are_packed_and_unpacked_in_several_threads_at_once() -> None:
    # The compaction sweep recompresses in threads while the event loop's thread reads
    # and writes logs: one zstd context used by two threads at once crashed the process.
    logs = seed_logs(200)
    dictionary = Dictionary("tenant", 1, codec.train(logs, 4096))
    stored = [(log, pack(log), pack(log, dictionary)) for log in logs]
    wrong: list[bytes] = []

    def work() -> None:
        for _ in range(20):
            for log, skeleton, trained in stored:
                if unpack(skeleton) != log or unpack(trained, dictionary) != log:
                    wrong.append(log)
                pack(log)
                pack(log, dictionary)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []


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

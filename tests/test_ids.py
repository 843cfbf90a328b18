"""Ids: their shapes, and no id handed out twice, even across forked worker processes;
and the timestamps logs show."""

from __future__ import annotations

import multiprocessing
import random
import re
import time
import uuid
from datetime import UTC, datetime, timedelta

from solder.ids import execution_id, iso_ms, item_id, name_uuid, now_ms

NANOID = re.compile(r"^[0-9A-Za-z_-]{21}$")


def test_execution_ids_have_nanoids_shape_and_do_not_repeat() -> None:
    ids = [execution_id() for _ in range(20_000)]
    assert all(NANOID.match(one) for one in ids)
    assert len(set(ids)) == len(ids)
    # Every symbol of the alphabet shows up in the random part: the bytes are spread
    # over all 64.
    assert len(set("".join(one[9:] for one in ids))) == 64


def test_execution_ids_begin_with_their_time_and_sort_by_it() -> None:
    """An execution's id begins with the milliseconds it was recorded at, so that ids
    recorded together sort together (the primary key's inserts land on its last pages)."""
    before = now_ms()
    first = [execution_id() for _ in range(1_000)]
    after = now_ms()
    time.sleep(0.002)
    later = execution_id()
    assert all(before <= int(one[:9], 36) <= after for one in first)
    assert all(re.fullmatch(r"[0-9a-z]{9}", one[:9]) for one in first)
    # In every collation: digits and lowercase letters sort alike in C and in linguistic ones.
    assert max(first) < later
    # The rest is random: 12 characters, 72 bits, never the same twice in one millisecond.
    assert len({one[9:] for one in first}) == len(first)


def test_item_ids_are_random_uuids_that_do_not_repeat() -> None:
    ids = [item_id() for _ in range(20_000)]
    assert all(uuid.UUID(one).version == 4 for one in ids)
    assert all(str(uuid.UUID(one)) == one for one in ids)  # the usual text: lower case, dashes
    assert all(uuid.UUID(one).variant == uuid.RFC_4122 for one in ids)
    assert len(set(ids)) == len(ids)


def test_a_name_gives_the_uuid5_of_the_standard_library() -> None:
    namespace = uuid.uuid4()
    names = ["", "x", "é", "exec-" + execution_id(), *(execution_id() for _ in range(2_000))]
    for name in names:
        assert name_uuid(namespace, name) == str(uuid.uuid5(namespace, name))


def _ids_in_child(queue: multiprocessing.Queue[list[str]]) -> None:
    queue.put([item_id() for _ in range(100)] + [execution_id() for _ in range(100)])


def test_a_forked_process_does_not_repeat_its_parents_ids() -> None:
    """Workers fork: a child must not hand out the ids its parent buffered."""
    item_id()  # the parent now holds a buffer of random bytes
    fork = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[list[str]] = fork.Queue()
    child = fork.Process(target=_ids_in_child, args=(queue,))
    child.start()
    theirs = queue.get(timeout=30)
    child.join(30)
    ours = [item_id() for _ in range(100)] + [execution_id() for _ in range(100)]
    assert not set(ours) & set(theirs)


def test_timestamps_are_iso_8601_utc_with_milliseconds() -> None:
    assert iso_ms(None) is None
    assert iso_ms(0) == "1970-01-01T00:00:00.000Z"
    assert iso_ms(1_731_693_462_781) == "2024-11-15T17:57:42.781Z"
    assert iso_ms(1_731_693_462_007) == "2024-11-15T17:57:42.007Z"
    assert iso_ms(-1) == "1969-12-31T23:59:59.999Z"
    # Many in one second and across seconds, each as datetime renders it.
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    start = 1_764_806_400_000
    for ms in [*range(start, start + 3_000, 7), *random.sample(range(2**41), 2_000)]:
        expected = (epoch + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds")
        assert iso_ms(ms) == expected.replace("+00:00", "Z")

"""`solder serve --processes N`: several serving processes on one port and one database,
their supervisor, and what happens when one of them dies."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from solder.store.database import Database
from solder.store.lock import FileLock, ProcessMarks
from solder.supervisor import Supervisor
from tests import databases
from tests.conftest import TIMEOUT, Api
from tests.processes import ServeProcess, environment, solder
from tests.runs import assert_each_ran_exactly_once, count_workflow, echo_n, wait_until_all_ended
from tests.upstream import Upstream

RUNS = 40
sqlite_only = pytest.mark.skipif(
    databases.on_postgres(),
    reason="SQLite only: on PostgreSQL the workers' heartbeat takes back a dead process's "
    "runs (test_scale_out.py)",
)


def serving_processes(supervisor: int, count: int) -> list[int]:
    """The supervisor's serving processes, once `count` of them are there."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
        if len(children) == count or time.monotonic() > deadline:
            return [int(child) for child in children]
        time.sleep(0.05)


def gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "State:\tZ" in status  # ended, not yet reaped by its parent


def marks_of(data_dir: Path) -> list[str]:
    """The live-process marks of the SQLite database under `data_dir`."""
    return [
        entry.name
        for directory in data_dir.glob("*.db.processes")
        for entry in directory.iterdir()
        if not entry.name.startswith(".")
    ]


@sqlite_only
def test_a_killed_process_loses_nothing_and_is_replaced(tmp_path: Path, upstream: Upstream) -> None:
    upstream.route("/count", echo_n)
    env = environment(
        tmp_path, SOLDER_HTTP_ALLOW_PRIVATE_NETWORKS="true", SOLDER_WORKER_CONCURRENCY="2"
    )
    created = solder("keys", "create", "--tenant", "acme", env=env)
    assert created.returncode == 0, created.stderr
    headers = {"Authorization": f"bearer {created.stdout.strip().splitlines()[-1]}"}
    log = tmp_path / "serve.log"
    group = ServeProcess(env, log, "--processes", "2")
    try:
        first, second = serving_processes(group.process.pid, 2)
        deadline = time.monotonic() + TIMEOUT
        while len(marks_of(tmp_path)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        # Clients of their own: each connection lands on either process.
        clients = [Api(base_url=group.base_url, headers=headers, timeout=TIMEOUT) for _ in range(8)]
        user_id, workflow_id = clients[0].install(count_workflow(upstream))
        upstream.hold()  # the first runs block in their http call; the rest stay queued
        accepted = {
            clients[n % len(clients)].run(user_id, workflow_id, {"n": n}): n for n in range(RUNS)
        }
        deadline = time.monotonic() + TIMEOUT
        while len(upstream.requests) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(upstream.requests) == 4, "each process runs two at once"

        os.kill(first, signal.SIGKILL)  # its two runs in flight are left running
        for client in clients:
            client.close()  # a connection to the killed process is gone with it
        upstream.release()
        with Api(base_url=group.base_url, headers=headers, timeout=TIMEOUT) as api:
            logs = wait_until_all_ended(api, workflow_id, RUNS)
        assert_each_ran_exactly_once(logs, accepted)
        # The blocks in flight at the kill ran again (at-least-once); every other once.
        calls = Counter(int(r.query["n"][0]) for r in upstream.requests)
        assert set(calls) == set(range(RUNS))
        assert sum(calls.values()) <= RUNS + 2

        replaced = serving_processes(group.process.pid, 2)
        assert second in replaced
        assert first not in replaced
        text = log.read_text()
        assert f"serving process [{first}] ended (exit status -9): starting another" in text
        assert "2 executions were left running by a process that died: resuming" in text
    finally:
        status = group.terminate()
    assert status == 0
    assert "Traceback" not in log.read_text()
    assert marks_of(tmp_path) == [], "each process's mark goes with it, a dead one's too"


@pytest.mark.skipif(
    databases.on_postgres(), reason="SQLite only: on PostgreSQL any number of servers share one"
)
def test_a_second_server_is_refused_while_a_group_serves(tmp_path: Path) -> None:
    env = environment(tmp_path)
    group = ServeProcess(env, tmp_path / "serve.log", "--processes", "2")
    try:
        second = solder("serve", "--port", "0", env=env, timeout=60)
        assert second.returncode == 1
        assert "another Solder process is serving" in second.stderr
    finally:
        assert group.terminate() == 0


def test_the_processes_end_with_their_supervisor(tmp_path: Path) -> None:
    env = environment(tmp_path)
    group = ServeProcess(env, tmp_path / "serve.log", "--processes", "2")
    children = serving_processes(group.process.pid, 2)
    status = Path(f"/proc/{group.process.pid}/status").read_text()
    rss_kb = int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])
    assert rss_kb < 40_000, "the supervisor is the standard library alone, not the server"
    group.kill()  # SIGKILL: the supervisor cannot stop them itself
    deadline = time.monotonic() + TIMEOUT
    while not all(gone(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(gone(pid) for pid in children), "orphaned processes stop within seconds"
    # Nothing is left holding the database: a new server starts on it.
    again = ServeProcess(env, tmp_path / "serve.log")
    again.terminate()


def test_processes_on_a_port_in_use_fail_with_a_clear_message(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = solder("serve", "--port", str(port), "--processes", "2", env=environment(tmp_path))
    assert result.returncode == 1
    assert "--port" in result.stderr
    assert "Traceback" not in result.stderr


def test_dev_mode_is_refused_with_processes(tmp_path: Path) -> None:
    result = solder("serve", "--dev", env=environment(tmp_path, SOLDER_PROCESSES="2"))
    assert result.returncode == 1
    assert "--dev serves with one process" in result.stderr


def short_lived(
    tmp_path: Path, *, lives_seconds: float
) -> tuple[list[str], Callable[[], list[float]]]:
    """A command for a supervisor: a process that says it serves, then ends after
    `lives_seconds`; and the times (`time.monotonic()`) at which each started so far."""
    starts = tmp_path / "starts"
    serving = tmp_path / "serving.py"
    serving.write_text(
        "import sys, time\n"
        "from solder.supervisor import say_ready\n"
        "with open(sys.argv[1], 'a') as out:\n"
        "    out.write(f'{time.monotonic()}\\n')\n"
        "say_ready()\n"
        f"time.sleep({lives_seconds})\n"
    )

    def started() -> list[float]:
        return [float(line) for line in starts.read_text().split()] if starts.exists() else []

    return [sys.executable, str(serving), str(starts)], started


def test_the_supervisor_replaces_an_ended_process_and_stops_on_a_broken_start(
    tmp_path: Path,
) -> None:
    serving, started = short_lived(tmp_path, lives_seconds=0.3)
    supervisor = Supervisor(serving, os.environ, 2, grace_seconds=1)
    threading.Timer(3.0, supervisor.stop).start()
    assert supervisor.run() == 0
    assert len(started()) > 2, "an ended process is replaced"

    broken = Supervisor(
        [sys.executable, "-c", "raise SystemExit(3)"], os.environ, 2, grace_seconds=1
    )
    began = time.monotonic()
    assert broken.run() == 3, "a process that never served stops the group, with its status"
    assert time.monotonic() - began < TIMEOUT


def test_a_process_that_keeps_dying_is_started_again_ever_more_slowly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One death is replaced at once; a second within 30 s of the start waits 1 s, then
    2, 4 ... instead of a new process every half second for as long as it goes on."""
    caplog.set_level(logging.WARNING, "solder.supervisor")
    serving, started = short_lived(tmp_path, lives_seconds=0)
    supervisor = Supervisor(serving, os.environ, 1, grace_seconds=1)

    def stop_after_three() -> None:
        deadline = time.monotonic() + TIMEOUT
        while len(started()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        supervisor.stop()

    threading.Thread(target=stop_after_three).start()
    assert supervisor.run() == 0
    first, second, third = started()[:3]
    assert second - first < TIMEOUT / 2, "the first death is replaced at once"
    assert third - second >= 1.0, "the second waits a second before the next start"
    assert "the 2nd in a row within 30 s of its start: starting another in 1 s" in caplog.text


def test_process_marks_tell_the_living_from_the_dead(tmp_path: Path) -> None:
    database = tmp_path / "solder.db"
    mine, sibling = ProcessMarks(database), ProcessMarks(database)
    token, other = mine.hold(), sibling.hold()
    assert len(token) == len(other) == ProcessMarks.TOKEN_LENGTH
    assert token != other
    assert mine.alive(token)
    assert mine.alive(other)
    assert sibling.alive(token)
    assert not mine.alive("nobody12")
    assert not mine.alive("")
    # A process that dies keeps its file, which nobody holds any more.
    assert sibling._fd is not None
    os.close(sibling._fd)
    sibling._fd = None
    assert not mine.alive(other)
    mine.forget_dead()
    assert sorted(p.name for p in mine.directory.iterdir()) == [token]
    mine.release()
    assert list(mine.directory.iterdir()) == []


def test_a_wait_for_the_write_lock_given_up_does_not_keep_it(tmp_path: Path) -> None:
    path = tmp_path / "write-lock"
    holder, waiter, later = FileLock(path), FileLock(path), FileLock(path)

    async def scenario() -> None:
        assert holder.try_acquire()
        waiting = asyncio.create_task(waiter.acquire())
        await asyncio.sleep(0.1)
        assert not waiting.done(), "it waits while another holds the lock"
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        holder.release()  # the waiter's thread takes it now, and gives it back
        await asyncio.sleep(0.2)
        assert later.try_acquire(), "the cancelled waiter kept the lock"
        later.release()

    try:
        asyncio.run(scenario())
    finally:
        for lock in (holder, waiter, later):
            lock.close()


@pytest.mark.skipif(
    databases.on_postgres(), reason="SQLite's lock files (advisory locks: test_scale_out.py)"
)
def test_background_work_is_done_by_one_process_at_a_time(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'solder.db'}"

    async def scenario() -> None:
        one, two = Database(url), Database(url)
        try:
            async with (
                one.try_lock(7) as first,
                two.try_lock(7) as second,
                two.try_lock(8) as other,
            ):
                assert (first, second, other) == (True, False, True)
            async with two.try_lock(7) as after:
                assert after, "given back at the block's end"
        finally:
            await one.dispose()
            await two.dispose()

    asyncio.run(scenario())

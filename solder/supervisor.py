"""`solder serve --processes N`: N serving processes on one port, and their supervisor.

Each process is a whole `solder serve` (the API, and the executions it accepts) with a
listening socket of its own on the port, bound with `SO_REUSEPORT`: the kernel spreads
new connections over the N sockets evenly. With one socket shared by all (uvicorn's own
`--workers`), whichever process woke first took the connections of a burst: a client
opening 32 at once got them all on one process, which saturated while the other idled
(bench/RESULTS.md, scenario 2).

The supervisor serves nothing. `solder serve` checks what it can (the settings, the
port, the database, which it migrates), then becomes the supervisor (`exec`): this
module alone, with the standard library only, 13 MB of memory instead of the 114 the
command had grown to. It holds the database's serve lock for the group (`store/lock.py`)
and the port (bound, not listening: a process restarted binds it again), both open
across the `exec`, starts the processes, starts another when one dies, and stops them
all on SIGTERM or SIGINT, giving each its grace to finish what it runs. A process that dies
before it says it serves (a byte on a pipe) is taken for a broken start (a bad setting,
say) that would fail again: the supervisor then stops the others and exits with its
status. One that served and died is replaced at once; if its replacement dies too
within `_STEADY_SECONDS` of its start, and the next, the supervisor waits before each
new start, 1 s then twice as long each time up to `_MAX_BACKOFF_SECONDS` (a process that
dies on every request it takes, or as its memory fills, would otherwise be started
twice a second for as long as it lasts); one that stays up that long resets the wait.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import NoReturn

log = logging.getLogger("solder.supervisor")

# Set in a supervised process's environment: the supervisor's process id, and the pipe
# on which the process says it serves.
SUPERVISOR_ENV = "SOLDER_SUPERVISOR_PID"
READY_FD_ENV = "SOLDER_SUPERVISOR_READY_FD"
_POLL_SECONDS = 0.5
_STEADY_SECONDS = 30.0
_MAX_BACKOFF_SECONDS = 30.0


def listening_socket(host: str, port: int, *, listen: bool = True) -> socket.socket:
    """A socket bound to `host:port` with SO_REUSEPORT, beside the other processes'."""
    if not hasattr(socket, "SO_REUSEPORT"):  # pragma: no cover (Linux, BSD and macOS have it)
        raise OSError("this platform has no SO_REUSEPORT: serve with one process")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if listen:
            sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def orphaned() -> bool:
    """Whether this supervised process's supervisor is gone (it then stops too)."""
    return os.environ.get(SUPERVISOR_ENV) != str(os.getppid())


def say_ready() -> None:
    """Tell the supervisor that this process serves."""
    fd = os.environ.pop(READY_FD_ENV, None)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.write(int(fd), b"1")
            os.close(int(fd))


class _Child:
    """One serving process, and whether it has said it serves."""

    def __init__(self, command: Sequence[str], env: Mapping[str, str]) -> None:
        self.ready_read, ready_write = os.pipe()
        os.set_blocking(self.ready_read, False)
        try:
            self.process = subprocess.Popen(  # noqa: S603 (our own command)
                command, env={**env, READY_FD_ENV: str(ready_write)}, pass_fds=(ready_write,)
            )
        finally:
            os.close(ready_write)
        self.ready = False
        self.started_at = time.monotonic()

    def said_ready(self) -> bool:
        if not self.ready and self.ready_read >= 0:
            with contextlib.suppress(BlockingIOError):
                self.ready = os.read(self.ready_read, 1) == b"1"
        return self.ready

    def close(self) -> None:
        if self.ready_read >= 0:
            os.close(self.ready_read)
            self.ready_read = -1


class _Slot:
    """One of the `count` processes: the one running, or when the next starts."""

    def __init__(self, child: _Child) -> None:
        self.child: _Child | None = child
        self.start_at = 0.0
        self.quick_deaths = 0  # in a row, each within _STEADY_SECONDS of its start

    def ended(self, now: float) -> float:
        """Note the end of the slot's process at `now`; how long to wait before the next."""
        assert self.child is not None
        lived = now - self.child.started_at
        self.child = None
        self.quick_deaths = self.quick_deaths + 1 if lived < _STEADY_SECONDS else 0
        if self.quick_deaths < 2:
            self.start_at = now
            return 0.0
        wait = min(2.0 ** (self.quick_deaths - 2), _MAX_BACKOFF_SECONDS)
        self.start_at = now + wait
        return wait


class Supervisor:
    """Runs `count` copies of `command` until told to stop."""

    def __init__(
        self,
        command: Sequence[str],
        env: Mapping[str, str],
        count: int,
        *,
        grace_seconds: float,
    ) -> None:
        self.command = list(command)
        self.env = {**env, SUPERVISOR_ENV: str(os.getpid())}
        self.count = count
        self.grace_seconds = grace_seconds
        self._stop = threading.Event()
        self._slots: list[_Slot] = []

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT (0), or until a process fails to start (its
        exit status)."""
        handlers = {
            sig: signal.signal(sig, lambda *_: self.stop())
            for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            return self._supervise()
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)

    def stop(self) -> None:
        """Stop the processes, and `run` with them."""
        self._stop.set()

    def _supervise(self) -> int:
        where = f"{self.env.get('SOLDER_HOST', '127.0.0.1')}:{self.env.get('SOLDER_PORT', '8000')}"
        log.info("starting %d serving processes on http://%s", self.count, where)
        self._slots = [_Slot(_Child(self.command, self.env)) for _ in range(self.count)]
        status = 0
        while not self._stop.wait(_POLL_SECONDS):
            for slot in self._slots:
                child = slot.child
                if child is None:
                    if time.monotonic() >= slot.start_at:
                        slot.child = _Child(self.command, self.env)
                    continue
                code = child.process.poll()
                if code is None:
                    child.said_ready()
                    continue
                started = child.said_ready()  # what it wrote before it ended
                child.close()
                if not started:
                    log.error(
                        "serving process [%d] failed to start (exit status %d): stopping",
                        child.process.pid,
                        code,
                    )
                    status = code if code > 0 else 1  # not a signal's negative number
                    self._stop.set()
                    break
                wait = slot.ended(time.monotonic())
                if wait == 0:
                    log.warning(
                        "serving process [%d] ended (exit status %d): starting another",
                        child.process.pid,
                        code,
                    )
                    slot.child = _Child(self.command, self.env)
                else:
                    log.warning(
                        "serving process [%d] ended (exit status %d), the %d%s in a row"
                        " within %.0f s of its start: starting another in %.0f s",
                        child.process.pid,
                        code,
                        slot.quick_deaths,
                        _ordinal(slot.quick_deaths),
                        _STEADY_SECONDS,
                        wait,
                    )
        self._stop_all()
        return status

    def _stop_all(self) -> None:
        children = [slot.child for slot in self._slots if slot.child is not None]
        for child in children:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_seconds + 10
        for child in children:
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("serving process [%d] did not stop in time: killed", child.process.pid)
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
                child.process.wait()
            child.close()


def _ordinal(n: int) -> str:
    if n % 100 in (11, 12, 13):
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def serving_command(*, worker: bool) -> list[str]:
    """The command line of one supervised serving process."""
    return [sys.executable, "-m", "solder", "serve", *([] if worker else ["--no-worker"])]


def become(count: int, *, grace_seconds: float, worker: bool, keep: Sequence[int]) -> NoReturn:
    """Replace this process with the supervisor of `count` serving processes, keeping the
    file descriptors `keep` open (the serve lock, the port). Does not return."""
    for fd in keep:
        os.set_inheritable(fd, True)
    sys.stdout.flush()
    sys.stderr.flush()
    arguments = ["--processes", str(count), "--grace", str(grace_seconds)]
    if not worker:
        arguments.append("--no-worker")
    os.execv(sys.executable, [sys.executable, "-m", "solder.supervisor", *arguments])  # noqa: S606
    raise AssertionError("unreachable: execv replaces the process or raises")


def main() -> None:
    parser = argparse.ArgumentParser(prog="solder serve --processes", description=__doc__)
    parser.add_argument("--processes", type=int, required=True)
    parser.add_argument("--grace", type=float, required=True)
    parser.add_argument("--no-worker", action="store_true")
    options = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    supervisor = Supervisor(
        serving_command(worker=not options.no_worker),
        os.environ,
        options.processes,
        grace_seconds=options.grace,
    )
    sys.exit(supervisor.run())


if __name__ == "__main__":
    main()

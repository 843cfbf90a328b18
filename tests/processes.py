"""Solder as separate processes, as a user runs it: `solder serve`, `solder keys create`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests import databases
from tests.conftest import TIMEOUT, free_port

SOLDER = [sys.executable, "-m", "solder"]


def environment(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOLDER_")}
    env.update({"SOLDER_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"})
    if url := databases.database_url(data_dir):
        env["SOLDER_DATABASE_URL"] = url
    env.update(extra)
    return env


def solder(
    *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SOLDER, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


class _Child:
    process: subprocess.Popen[bytes]

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs (a worker sends no heartbeat again)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(TIMEOUT)

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(TIMEOUT)


class ServeProcess(_Child):
    """`solder serve` in a child process; its output goes to a file for the test to read.

    Its port is found free here and bound by the child: another process (a test beside
    it) may take the port in between. The child then says it "could not listen" and
    exits, and a new port is tried, up to `_PORT_TRIES` in all.
    """

    _PORT_TRIES = 5

    def __init__(self, env: dict[str, str], log: Path, *args: str) -> None:
        self.log = log
        for _ in range(self._PORT_TRIES):
            start = log.stat().st_size if log.exists() else 0
            self.port = free_port()
            self.base_url = f"http://127.0.0.1:{self.port}"
            with log.open("ab") as out:
                self.process = subprocess.Popen(
                    [*SOLDER, "serve", "--port", str(self.port), *args],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            if self._started():
                return
            if "could not listen on" not in log.read_text(errors="replace")[start:]:
                break
        self.kill()
        raise RuntimeError(f"solder serve did not start:\n{log.read_text()}")

    def _started(self) -> bool:
        """Whether the child answers its health check (False once it has exited)."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                if httpx.get(f"{self.base_url}/health", timeout=1).status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.05)


class WorkerProcess(_Child):
    """`solder worker` in a child process (PostgreSQL); its output goes to a file."""

    def __init__(self, env: dict[str, str], log: Path, *args: str) -> None:
        self.log = log
        start = log.stat().st_size if log.exists() else 0
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [*SOLDER, "worker", *args], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + TIMEOUT
        while "started: running executions" not in log.read_text()[start:]:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"solder worker did not start:\n{log.read_text()}")
            time.sleep(0.05)

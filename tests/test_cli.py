"""The `solder` command as a user runs it, in a subprocess."""

from __future__ import annotations

import json
import shlex
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import databases
from tests.conftest import TIMEOUT
from tests.processes import ServeProcess, environment, solder


def test_keys_create_prints_the_key_alone_on_the_last_line(tmp_path: Path) -> None:
    env = environment(tmp_path)
    created = solder("keys", "create", "--tenant", "acme", env=env)
    assert created.returncode == 0, created.stderr
    key = created.stdout.splitlines()[-1]
    assert key.startswith("sk_")
    assert len(key.split()) == 1
    assert len(key) > 40

    listed = solder("keys", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "acme" in listed.stdout
    assert key[:10] in listed.stdout
    assert key not in listed.stdout, "only the key's start is listed"
    stored = b"".join(databases.stored_bytes(tmp_path).values())
    assert key.encode() not in stored, "stored hashed"


def test_a_revoked_key_gets_401(tmp_path: Path) -> None:
    env = environment(tmp_path)
    key = solder("keys", "create", "--tenant", "acme", env=env).stdout.splitlines()[-1]
    server = ServeProcess(env, tmp_path / "serve.log")
    try:
        headers = {"Authorization": f"bearer {key}"}
        assert httpx.get(f"{server.base_url}/users", headers=headers).status_code == 200
        key_id = next(
            line.split("\t")[0]
            for line in solder("keys", "list", env=env).stdout.splitlines()
            if "acme" in line
        )
        revoked = solder("keys", "revoke", key_id, env=env)
        assert revoked.returncode == 0, revoked.stderr
        refused = httpx.get(f"{server.base_url}/users", headers=headers)
        assert refused.status_code == 401
        assert refused.json()["error"] == "unauthorized"
    finally:
        server.terminate()


def test_revoking_an_unknown_key_says_what_to_do(tmp_path: Path) -> None:
    result = solder("keys", "revoke", "0" * 24, env=environment(tmp_path))
    assert result.returncode == 1
    assert "solder keys list" in result.stderr


def test_a_bad_database_url_is_a_clear_error(tmp_path: Path) -> None:
    env = environment(tmp_path, SOLDER_DATABASE_URL="mysql://nowhere/db")
    result = solder("keys", "list", env=env)
    assert result.returncode == 1
    assert "SOLDER_DATABASE_URL" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_an_in_memory_database_is_refused_with_what_to_give_instead(
    tmp_path: Path, url: str
) -> None:
    # Solder's connections, threads and child processes (the compaction sweep's) must
    # all open the same database: one in memory is each connection's own.
    result = solder("keys", "list", env=environment(tmp_path, SOLDER_DATABASE_URL=url))
    assert result.returncode == 1
    said = " ".join(result.stderr.split())
    assert "an in-memory SQLite database cannot be shared" in said
    assert "give a file, e.g. sqlite:///data/solder.db" in said
    assert "Traceback" not in result.stderr


def test_dev_mode_prints_a_curl_line_that_lists_real_logs(tmp_path: Path) -> None:
    """What `make run` does: serve --dev on a fresh data dir."""
    env = environment(tmp_path)
    log = tmp_path / "serve.log"
    server = ServeProcess(env, log, "--dev")
    try:
        line = wait_for_curl_line(log)
        logs = fetch_with(line)
        assert len(logs["data"]) == 1
        demo = logs["data"][0]
        assert demo["finished"] is True
        assert demo["results"][2]["data"][0][0]["json"]["greeting"] == "Hello Ada"
    finally:
        server.terminate()
    # A second start reuses the dev setup: same tenant, key and workflow, no second demo run.
    again = ServeProcess(env, log, "--dev")
    try:
        deadline = time.monotonic() + TIMEOUT
        while log.read_text().count("\ncurl ") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        second = [ln for ln in log.read_text().splitlines() if ln.startswith("curl ")][-1]
        assert second.split("/workflows/")[1] == line.split("/workflows/")[1]
        assert len(fetch_with(second)["data"]) == 1
    finally:
        again.terminate()


def wait_for_curl_line(log: Path) -> str:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        lines = [ln for ln in log.read_text().splitlines() if ln.startswith("curl ")]
        if lines:
            return lines[0]
        time.sleep(0.1)
    raise AssertionError(f"no curl line printed:\n{log.read_text()}")


def fetch_with(curl_line: str) -> dict[str, Any]:
    """Run the printed line with curl, as a user pastes it (or replay it if curl is absent)."""
    args = shlex.split(curl_line)
    if shutil.which("curl"):
        output = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT, check=True)
        body: dict[str, Any] = json.loads(output.stdout)
        return body
    headers = dict(args[i + 1].split(": ", 1) for i, a in enumerate(args) if a == "-H")
    body = httpx.get(args[-1], headers=headers, timeout=TIMEOUT).json()
    return body


def test_serve_on_a_busy_port_says_what_to_do(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = solder("serve", "--port", str(port), env=environment(tmp_path), timeout=60)
    assert result.returncode == 1
    assert "--port" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(
    databases.on_postgres(), reason="SQLite only: on PostgreSQL any number of servers share one"
)
def test_a_second_server_on_the_same_sqlite_database_is_refused(tmp_path: Path) -> None:
    env = environment(tmp_path)
    first = ServeProcess(env, tmp_path / "serve.log")
    try:
        second = solder("serve", "--port", "0", env=env, timeout=60)
        assert second.returncode == 1
        assert "another Solder process is serving" in second.stderr
        assert "SOLDER_DATA_DIR" in second.stderr
        assert httpx.get(f"{first.base_url}/health").status_code == 200
    finally:
        first.terminate()


def test_an_invalid_setting_names_the_variable(tmp_path: Path) -> None:
    result = solder("keys", "list", env=environment(tmp_path, SOLDER_WORKER_CONCURRENCY="many"))
    assert result.returncode == 1
    assert "SOLDER_WORKER_CONCURRENCY" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(databases.on_postgres(), reason="SQLite only: what needs PostgreSQL says so")
@pytest.mark.parametrize(
    ("command", "says"),
    [(("worker",), "solder worker needs PostgreSQL"), (("serve", "--no-worker"), "--no-worker")],
)
def test_scale_out_commands_on_sqlite_say_they_need_postgresql(
    tmp_path: Path, command: tuple[str, ...], says: str
) -> None:
    result = solder(*command, env=environment(tmp_path), timeout=60)
    assert result.returncode == 1
    assert says in result.stderr
    assert "SOLDER_DATABASE_URL=postgresql://" in result.stderr
    assert "Traceback" not in result.stderr

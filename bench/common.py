"""What every scenario of the suite shares: the machine's description and wrk's load."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from scale_out import BenchError

WRK_MISSING = "wrk is missing: install it (Debian/Ubuntu: `apt-get install -y wrk`) and rerun"
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


@dataclass(frozen=True)
class Load:
    """What one wrk run measured."""

    rate: float  # requests per second
    p99_ms: float
    errors: int  # socket errors: connect, read, write and timeouts


def machine() -> list[str]:
    """Lines saying where and when the figures were measured."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    free = subprocess.run(["free", "-g"], capture_output=True, text=True, check=False).stdout
    load = ", ".join(f"{avg:.2f}" for avg in os.getloadavg())
    git = ["git", "-C", str(Path(__file__).parent)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "solder"], capture_output=True, text=True
    )
    return [
        f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; code: commit {commit.stdout.strip()}"
        + (" with uncommitted changes under solder/" if dirty.stdout.strip() else ""),
        f"nproc: {os.cpu_count()}; CPU: {cpu}; Python {platform.python_version()}",
        *(f"free -g: {line}" for line in free.splitlines()[:2]),
        f"load average (1, 5, 15 min): {load}",
    ]


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise BenchError(WRK_MISSING)
    return path


def wrk(url: str, headers: dict[str, str], seconds: float, connections: int = 16) -> Load:
    """Load `url` for `seconds` with wrk (2 threads); its rate and p99 latency."""
    args = [require_wrk(), "--latency", "-t2", f"-c{connections}", f"-d{seconds:g}s"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    done = subprocess.run(
        [*args, url], capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"wrk failed on {url}:\n{done.stderr or done.stdout}")
    return parse_wrk(done.stdout, url)


def parse_wrk(output: str, url: str) -> Load:
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        raise BenchError(f"{match.group(1)} error answers from {url}:\n{output}")
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.MULTILINE)
    if rate is None or p99 is None:
        raise BenchError(f"unexpected wrk output for {url}:\n{output}")
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return Load(
        rate=float(rate.group(1)),
        p99_ms=float(p99.group(1)) * _UNITS[p99.group(2)],
        errors=sum(map(int, errors.groups())) if errors else 0,
    )


def elapsed(since: float) -> str:
    seconds = time.monotonic() - since
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"

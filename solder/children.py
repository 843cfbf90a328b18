"""Solder's own modules run as child processes (`python -m solder.<module>`), with pipes.

The compaction sweep hands its heaviest work to such children (solder/training.py and
solder/recompressing.py say why): their memory goes when they exit, and their CPU is
on another core, without the server's GIL.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Child:
    """A started child and its three pipes."""

    process: asyncio.subprocess.Process
    stdin: asyncio.StreamWriter
    stdout: asyncio.StreamReader
    stderr: asyncio.StreamReader


async def start(module: str) -> Child:
    """Start `python -m module` with this Python and this Solder, piped both ways."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-P",  # not the working directory's modules: this Solder's
        "-m",
        module,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    assert process.stderr is not None
    return Child(process, process.stdin, process.stdout, process.stderr)


def ended(what: str, status: int | None, err: bytes) -> str:
    """How a child that did not answer ended: its exit status and the end of its
    standard error (a traceback's last lines)."""
    said = err.decode(errors="replace").strip()[-2000:]
    return f"the {what} process exited with status {status}: {said or 'no message'}"

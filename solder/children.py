"""Solder's own modules run as child processes (`python -m solder.<module>`), with pipes.

The compaction sweep hands its heaviest work to such children (solder/training.py and
solder/recompressing.py say why): their memory goes when they exit, and their CPU is
on another core, without the server's GIL.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # a child imports this module too, and starts faster without asyncio
    import asyncio

NICENESS = 10


@dataclass(frozen=True)
class Child:
    """A started child and its three pipes."""

    process: asyncio.subprocess.Process
    stdin: asyncio.StreamWriter
    stdout: asyncio.StreamReader
    stderr: asyncio.StreamReader


async def start(module: str) -> Child:
    """Start `python -m module` with this Python and this Solder, piped both ways."""
    import asyncio

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


def lower_priority() -> None:
    """In a child: run at a lower priority than the server that started it (`nice` 10),
    so that its work takes the CPU the server leaves."""
    with contextlib.suppress(OSError):  # some sandboxes refuse it; the work goes on
        os.nice(NICENESS)

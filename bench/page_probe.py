"""A diagnostic for the logs page statement: its time alone, this tree's against another
revision's, in turns in one process, on the logs-read data set (SQLite, and PostgreSQL
when reachable). Scenario 1 measures the whole request; a change to the statement that
moves a few microseconds of a request's few hundred is lost in its noise, not here.

    .venv/bin/python bench/page_probe.py REV [--scale 0.1] [--rounds 9] [--calls 1500]

REV is checked out into a temporary work tree, and its statements are compiled there (a
child process of this `.venv`); this tree's are compiled here. Both run on this tree's
data set, so REV must read the same schema (migration 0009 or later). Each shape is run
on the data set's ordinary and big pairs (as scenario 1 asks for them, limit=10); both
statements must return the same rows. A round times `calls` of one, then `calls` of the
other; the table gives the median time of each and the median of the rounds' ratios
(REV's time over this tree's: above 1, this tree is faster).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from common import ROOT, work_tree
from logs_dataset import (
    Dataset,
    create_api_key,
    user_id,
    user_number,
    workflow_id,
    workflow_number,
)
from logs_read import postgres_dataset, sqlite_dataset
from rich.console import Console
from rich.table import Table

POSTGRES = "postgresql://postgres@127.0.0.1:5432"
# (label, descending, by user, start): the page 1 scenario 1 reads, of one user and of
# all users, a page after a cursor, a page at an offset.
SHAPES = (
    ("page 1, one user", True, True, "first"),
    ("page 1, all users", True, False, "first"),
    ("after a cursor, one user", True, True, "after"),
    ("page 2 by number, one user", True, True, "offset"),
)
# Compiles every shape of the tree it runs in, for both databases, as JSON on stdout.
# Before log positions' first-page shape, `_page_statement` took `after: bool`.
COMPILE = """
import inspect, json
from solder.store import prepared, queries
shapes = json.loads(input())
new = "start" in inspect.signature(queries._page_statement.__wrapped__).parameters
out = {}
for label, descending, by_user, start in shapes:
    statement = queries._page_statement(
        descending, by_user, start if new else start == "after"
    )
    out[label] = {
        "sqlite": statement.compiled(prepared._SQLITE_NAMED),
        "postgresql": statement.compiled(prepared._POSTGRES),
    }
print(json.dumps(out))
"""

SKIPPED = 5
LAST = "SELECT last_position FROM log_listings WHERE workflow_number = {} AND user_number = {}"

console = Console()
Compiled = dict[str, dict[str, tuple[str, dict[str, Any]]]]


def compiled_in(tree: Path) -> Compiled:
    answer = subprocess.run(
        [sys.executable, "-c", COMPILE],
        cwd=tree,
        input=json.dumps(SHAPES),
        capture_output=True,
        text=True,
        check=True,
    )
    result: Compiled = json.loads(answer.stdout)
    return result


def pair_of(dataset: Dataset, pair: str) -> tuple[int, int]:
    """The workflow's and the user's indexes in the data set of scenario 1's `pair`."""
    return (0, 1) if pair == "ordinary" else (dataset.workflows, 0)


def params(key_hash: str, dataset: Dataset, pair: str, start: str, last: int) -> dict[str, Any]:
    workflow, user = pair_of(dataset, pair)
    # limit=10 as scenario 1 asks, plus the one that says whether a next page exists.
    # The cursor and the offset both start the page past the newest SKIPPED (the
    # ordinary pair has no second page of 10 at every scale): `last` is the position of
    # the newest.
    return {
        "key_hash": key_hash,
        "workflow": workflow_id(workflow),
        "user": user_id(user),
        "limit": 11,
        # REV's first page may be its page at an offset of 0.
        "offset": SKIPPED if start == "offset" else 0,
        "after": last - SKIPPED + 1,
    }


def measure(
    run: Callable[[str, dict[str, Any]], list[Any]],
    theirs: tuple[str, dict[str, Any]],
    ours: tuple[str, dict[str, Any]],
    given: dict[str, Any],
    *,
    rounds: int,
    calls: int,
) -> tuple[float, float, float]:
    """REV's and this tree's median µs a statement, and the median of their ratios."""
    statements = [(sql, {**constants, **given}) for sql, constants in (theirs, ours)]
    first, second = (run(*statement) for statement in statements)
    if first != second or not first:
        raise SystemExit("the two statements return different rows: REV's schema differs")
    times: list[list[float]] = [[], []]
    for _ in range(rounds):
        for index, statement in enumerate(statements):
            started = time.perf_counter()
            for _ in range(calls):
                run(*statement)
            times[index].append((time.perf_counter() - started) / calls * 1e6)
    ratios = [a / b for a, b in zip(*times, strict=True)]
    return statistics.median(times[0]), statistics.median(times[1]), statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rev", help="the revision to compare this tree with")
    parser.add_argument("--scale", type=float, default=0.1, help="of scenario 1's data set")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=1500, help="of each statement a round")
    parser.add_argument("--postgres-url", default=POSTGRES)
    options = parser.parse_args()
    dataset = Dataset(options.scale)
    with work_tree(options.rev) as tree:
        theirs = compiled_in(tree)
    ours = compiled_in(ROOT)
    table = Table(title=f"The logs page statement alone: {options.rev} against this tree")
    for column in ("database", "shape", "pair", f"{options.rev} µs", "this µs", "ratio"):
        table.add_column(column, justify="left" if column in ("database", "shape") else "right")

    def add(backend: str, run: Callable[[str, dict[str, Any]], list[Any]], key: str) -> None:
        name = backend.lower()
        for label, _, _, start in SHAPES:
            for pair in ("ordinary", "big"):
                workflow, user = pair_of(dataset, pair)
                numbers = workflow_number(workflow), user_number(user)
                given = params(key, dataset, pair, start, run(LAST.format(*numbers), {})[0][0])
                figures = measure(
                    run,
                    theirs[label][name],
                    ours[label][name],
                    given,
                    rounds=options.rounds,
                    calls=options.calls,
                )
                them, us, ratio = figures
                table.add_row(backend, label, pair, f"{them:.1f}", f"{us:.1f}", f"{ratio:.2f}")
                console.print(f"{backend}, {label}, {pair} pair: {ratio:.2f}")

    path, _ = sqlite_dataset(dataset)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        if conn.execute("SELECT count(*) FROM api_keys").fetchone()[0] == 0:
            asyncio.run(create_api_key(f"sqlite:///{path}"))
        key = conn.execute("SELECT key_hash FROM api_keys LIMIT 1").fetchone()[0]
        add("SQLite", lambda sql, given: conn.execute(sql, given).fetchall(), key)
    try:
        psycopg.connect(f"{options.postgres_url}/postgres", connect_timeout=3).close()
    except psycopg.OperationalError as error:
        console.print(f"PostgreSQL skipped: {options.postgres_url} does not answer ({error})")
    else:
        with (
            postgres_dataset(options.postgres_url, dataset) as (url, _),
            psycopg.connect(url, autocommit=True) as pg,
        ):
            asyncio.run(create_api_key(url))
            row = pg.execute("SELECT key_hash FROM api_keys LIMIT 1").fetchone()
            assert row is not None
            # The server's connections prepare a statement from its fifth run on.
            add("PostgreSQL", lambda sql, given: pg.execute(sql, given).fetchall(), row[0])
    console.print(table)


if __name__ == "__main__":
    main()

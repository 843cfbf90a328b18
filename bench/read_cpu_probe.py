"""A diagnostic for what a logs page costs the server: its CPU a request and its rate,
REV's server against this tree's, in turns on one data set. Scenario 1 gives the rate
alone, whose noise on a shared machine hides a change of a few percent; the server's
CPU a request moves less with the machine's other work.

    .venv/bin/python bench/read_cpu_probe.py REV [--backend postgresql|sqlite]
        [--pairs 6] [--seconds 10] [--scale 0.1]

REV is checked out into a temporary work tree; each server (`solder serve`, with
`--no-worker` on PostgreSQL as in production) runs the code of its tree through
`PYTHONPATH`, from a directory of neither. Both serve scenario 1's data set, so REV must
read the same schema. wrk asks for the ordinary pair's page 1 at limit=10: 2 s of
warm-up, then `seconds` measured, the CPU time from `/proc`. The order is swapped every
pair; the table gives each pair's ratios and their medians.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
from pathlib import Path

from common import ROOT, work_tree, wrk
from logs_dataset import Dataset, create_api_key
from logs_read import postgres_dataset, requests, serving, sqlite_dataset
from rich.console import Console
from rich.table import Table
from scale_out import cpu_seconds

POSTGRES = "postgresql://postgres@127.0.0.1:5432"
WARM_UP_SECONDS = 2.0

console = Console()


def measure(
    tree: Path, url: str, dataset: Dataset, key: str, seconds: float
) -> tuple[float, float]:
    """The rate (req/s) and the server's CPU a request (µs) of the server of `tree`."""
    headers = {"Authorization": f"bearer {key}", "x-api-version": "2025-09"}
    os.environ["PYTHONPATH"] = str(tree)  # the server's environment is a copy of ours
    with (
        tempfile.TemporaryDirectory(prefix="solder-cpu-probe-") as workdir,
        serving(url, Path(workdir), sqlite=url.startswith("sqlite")) as (base, pid),
    ):
        path = base + requests(dataset)[0].path
        wrk(path, headers, WARM_UP_SECONDS)
        before = cpu_seconds(pid)
        load = wrk(path, headers, seconds)
        used = cpu_seconds(pid) - before
    return load.rate, used / (load.rate * seconds) * 1e6


def compare(rev: str, url: str, dataset: Dataset, *, pairs: int, seconds: float) -> Table:
    key = asyncio.run(create_api_key(url))
    figures: dict[str, list[tuple[float, float]]] = {"rev": [], "this": []}
    with work_tree(rev) as tree:
        for pair in range(pairs):
            order = [("rev", tree), ("this", ROOT)]
            for name, code in order if pair % 2 == 0 else order[::-1]:
                rate, cpu = measure(code, url, dataset, key, seconds)
                figures[name].append((rate, cpu))
                label = rev if name == "rev" else "this tree"
                console.print(f"pair {pair + 1}, {label}: {rate:,.0f} req/s, {cpu:.0f} µs CPU")
    pairs_of = list(zip(figures["rev"], figures["this"], strict=True))
    rates = [this[0] / theirs[0] for theirs, this in pairs_of]
    cpus = [theirs[1] / this[1] for theirs, this in pairs_of]
    table = Table(title=f"Page 1 (ordinary pair, limit=10): {rev} against this tree")
    for column in ("figure", "each pair", "median"):
        table.add_column(column, justify="right" if column == "median" else "left")
    table.add_row(
        "rate, this ÷ REV", ", ".join(f"{r:.2f}" for r in rates), f"{statistics.median(rates):.2f}"
    )
    table.add_row(
        "server CPU a request, REV ÷ this",
        ", ".join(f"{c:.2f}" for c in cpus),
        f"{statistics.median(cpus):.2f}",
    )
    for name, label in (("rev", rev), ("this", "this tree")):
        rate = statistics.median(r for r, _ in figures[name])
        cpu = statistics.median(c for _, c in figures[name])
        table.add_row(f"{label}: req/s; µs CPU a request", "", f"{rate:,.0f}; {cpu:.0f}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rev", help="the revision to compare this tree with")
    parser.add_argument("--backend", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured, each server")
    parser.add_argument("--scale", type=float, default=0.1, help="of scenario 1's data set")
    parser.add_argument("--postgres-url", default=POSTGRES)
    options = parser.parse_args()
    dataset = Dataset(options.scale)
    os.chdir(tempfile.gettempdir())  # `python -m solder` looks in its directory first
    if options.backend == "sqlite":
        path, _ = sqlite_dataset(dataset)
        table = compare(
            options.rev,
            f"sqlite:///{path}",
            dataset,
            pairs=options.pairs,
            seconds=options.seconds,
        )
    else:
        with postgres_dataset(options.postgres_url, dataset) as (url, _):
            table = compare(options.rev, url, dataset, pairs=options.pairs, seconds=options.seconds)
    console.print(table)


if __name__ == "__main__":
    main()

"""Micro-benchmark: the ledger journal's group commit (``Journal.append``), zero-filled room against none.

Every billed request waits for its row's synced write before its response's last byte (SPEC §10,
§11), so the commit's latency is on every request's path. The journal keeps its active segment
zero-filled ahead of the records (``zeroed_ahead``): a synced write then overwrites allocated
blocks instead of growing the file. This times both ways in one run, in interleaved rounds on the
same disk: appends one after the other (``c=1``: one row a group) and ``--concurrency`` at a time
(rows share groups), with latency percentiles in microseconds and the kernel CPU time per row
(the sync's cost, most of it on the journal's thread).

    .venv/bin/python bench/journal_commit.py
    .venv/bin/python bench/journal_commit.py --rows 2000 --rounds 5 --dir /var/lib/cachegate/journal
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from ledger_append import percentile
from usage_query import ledger

from cachegate.gateway.journal import ZEROED_AHEAD, Journal

WAYS = {"zero-filled": ZEROED_AHEAD, "appended": 0}


async def run(folder: Path, zeroed_ahead: int, rows: int, concurrency: int) -> tuple[list[float], float]:
    """Latencies (µs) of ``rows`` appends, ``concurrency`` at a time, and the kernel CPU µs per row."""
    journal = Journal(folder, lambda rows: None, zeroed_ahead=zeroed_ahead)
    await journal.open()
    *batch, first_row = ledger(rows + 1, datetime.now(UTC))
    await journal.append(first_row)  # the segment is made (and zero-filled) before the clock starts
    samples: list[float] = []

    async def append(sequence: int) -> None:
        start = time.perf_counter()
        await journal.append(batch[sequence])
        samples.append((time.perf_counter() - start) * 1e6)

    before = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    for first in range(0, rows, concurrency):
        await asyncio.gather(*(append(n) for n in range(first, min(rows, first + concurrency))))
    kernel = resource.getrusage(resource.RUSAGE_SELF).ru_stime - before
    await journal.close()
    for segment in folder.glob("*.journal"):
        segment.unlink()
    return samples, kernel / rows * 1e6


async def main(arguments: argparse.Namespace) -> None:
    print(f"{arguments.rows} appends per round, {arguments.rounds} rounds each way; microseconds")
    print(f"{'way':12} {'c':>3} {'p50':>8} {'p90':>8} {'p99':>8} {'mean':>8} {'kernel/row':>11}")
    for concurrency in (1, arguments.concurrency):
        results: dict[str, tuple[list[float], list[float]]] = {way: ([], []) for way in WAYS}
        for round_ in range(arguments.rounds):  # interleaved, alternating who goes first
            ways = list(WAYS) if round_ % 2 == 0 else list(reversed(WAYS))
            for way in ways:
                samples, kernel = await run(arguments.dir, WAYS[way], arguments.rows, concurrency)
                results[way][0].extend(samples)
                results[way][1].append(kernel)
        for way, (samples, kernels) in results.items():
            p50, p90, p99 = (percentile(samples, f) for f in (0.5, 0.9, 0.99))
            print(
                f"{way:12} {concurrency:>3} {p50:>8.0f} {p90:>8.0f} {p99:>8.0f} {statistics.fmean(samples):>8.0f}"
                f" {statistics.median(kernels):>11.1f}"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000, help="appends per round (default 1000)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds each way (default 4)")
    parser.add_argument("--concurrency", type=int, default=32, help="appends at a time in the second table part")
    parser.add_argument(
        "--dir", type=Path, default=None, help="the journal's folder (default: a new one in the working directory)"
    )
    arguments = parser.parse_args()
    if arguments.dir is not None:
        arguments.dir.mkdir(parents=True, exist_ok=True)
        asyncio.run(main(arguments))
    else:
        # In the working directory rather than /tmp, which may be a RAM file system that syncs nothing.
        with tempfile.TemporaryDirectory(prefix=".journal-bench-", dir=".") as folder:
            arguments.dir = Path(folder)
            asyncio.run(main(arguments))

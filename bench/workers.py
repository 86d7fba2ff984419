"""Benchmark: ``cachegate serve --workers 2`` against one worker, side by side in one run.

The same fake upstream, configuration and ~8.5 KB cached chat body as ``bench.py``; the two
gateways run at once on the same data and are measured in interleaved rounds (1, 2, 2, 1, ...),
medians reported, so load from elsewhere falls on both. Nothing is pinned but ``wrk`` (core 1, as
in ``bench.py``): on a two-core machine the workers share the cores with the upstream and the
load generator, so the ratio shows what a second worker buys here, not on a dedicated host.

    .venv/bin/python bench/workers.py --duration 10 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import WRK_SCRIPT, chat_body, create_key, free_port, post, stop, wait_ready, write_config, wrk


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="whole seconds per run (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved runs per cell (default 3)")
    args = parser.parse_args()

    cachegate = str(Path(sys.executable).with_name("cachegate"))
    work = Path(tempfile.mkdtemp(prefix="cachegate-bench-workers-"))
    upstream_port, one_port, two_port = free_port(), free_port(), free_port()
    config = write_config(work, upstream_port)
    key = asyncio.run(create_key(f"sqlite:///{work / 'control.db'}"))
    script = work / "bench.lua"
    script.write_text(WRK_SCRIPT)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    upstream = subprocess.Popen([cachegate, "-c", str(config), "fake-upstream", "--port", str(upstream_port)], **quiet)
    gateways = {
        workers: subprocess.Popen(
            [cachegate, "-c", str(config), "serve", "--port", str(port), "--workers", str(workers)], **quiet
        )
        for workers, port in ((1, one_port), (2, two_port))
    }
    urls = {1: f"http://127.0.0.1:{one_port}", 2: f"http://127.0.0.1:{two_port}"}
    try:
        wait_ready(f"http://127.0.0.1:{upstream_port}/v1/models", upstream)
        for workers, process in gateways.items():
            wait_ready(f"{urls[workers]}/healthz", process)
        print(
            f"{'mode':<7}{'conc':>5} | {'1 worker req/s':>14}{'p50 ms':>8} | {'2 workers req/s':>15}{'p50 ms':>8}"
            f" | {'ratio':>6}"
        )
        for stream in (False, True):
            mode = "stream" if stream else "json"
            body = work / f"{mode}.json"
            body.write_bytes(chat_body("bench", stream, marked=True))
            for workers in gateways:  # every worker of each warmed: the prefix is cached for all
                for _ in range(4):
                    post(f"{urls[workers]}/v1/chat/completions", chat_body("bench", False, marked=True), key)
            for connections in (1, 32):
                runs: dict[int, list[tuple[float, float]]] = {1: [], 2: []}
                for round_ in range(args.rounds):
                    for workers in (1, 2) if round_ % 2 == 0 else (2, 1):
                        run = wrk(f"{urls[workers]}/v1/chat/completions", body, key, connections, args.duration, script)
                        runs[workers].append((run.rps, run.p50_ms))
                one, two = (statistics.median(rps for rps, _ in runs[n]) for n in (1, 2))
                one_p50, two_p50 = (statistics.median(p50 for _, p50 in runs[n]) for n in (1, 2))
                print(
                    f"{mode:<7}{connections:>5} | {one:>14.0f}{one_p50:>8.2f} | {two:>15.0f}{two_p50:>8.2f}"
                    f" | {two / one:>6.2f}"
                )
    finally:
        stop(*gateways.values(), upstream)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

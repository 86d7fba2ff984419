"""Benchmark: two checkouts of cachegate side by side in one run — a change's "before and after".

Starts the fake upstream (core 1) and one gateway per checkout (both on core 0, each its own index
and ledger journal, one control store and key), then measures JSON and streaming (at concurrency
32, or as given) with ``wrk`` as ``bench.py`` does, in interleaved rounds (A, B, then B, A, ...)
so that load from other processes on the machine falls on both alike, and reports medians:
requests/s, p50 and the gateway's CPU per request, and how many rounds the second side won. The
gateways run each checkout's own ``src`` with this virtualenv's libraries. ``--set`` gives the
second gateway a setting of its own (an environment variable), so that one checkout can be
compared with itself under two configurations.

    .venv/bin/python bench/compare.py /path/to/before-checkout            # against this one
    .venv/bin/python bench/compare.py OLD NEW --rounds 6 --duration 4
    .venv/bin/python bench/compare.py . . --set CACHEGATE_LEDGER__JOURNAL__COMMIT_DELAY_MS=0 --connections 8 32
    git worktree add /tmp/before <commit>                                 # a checkout of any commit
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import WRK_SCRIPT, Run, chat_body, create_key, free_port, measure, post, stop, wait_ready, write_config

HERE = Path(__file__).resolve().parent.parent


def gateway(checkout: Path, config: Path, port: int, settings: dict[str, str]) -> subprocess.Popen[bytes]:
    """``cachegate serve`` from ``checkout``'s sources, on core 0."""
    return subprocess.Popen(
        ["taskset", "-c", "0", sys.executable, "-m", "cachegate", "-c", str(config), "serve", "--port", str(port)],
        env={**os.environ, **settings, "PYTHONPATH": str(checkout / "src")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def setting(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` of ``--set``, as a pair."""
    name, equals, value = text.partition("=")
    if not name or not equals:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path, help="a checkout of cachegate (its src/ is run)")
    parser.add_argument("after", type=Path, nargs="?", default=HERE, help="another checkout (default: this one)")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved runs per checkout and mode (default 6)")
    parser.add_argument("--duration", type=int, default=4, help="whole seconds per run (default 4)")
    parser.add_argument("--connections", type=int, nargs="+", default=[32], help="concurrencies (default 32)")
    parser.add_argument(
        "--set",
        action="append",
        type=setting,
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable of the second gateway",
    )
    args = parser.parse_args()
    checkouts = [args.before.resolve(), args.after.resolve()]
    settings = dict(args.set)
    for checkout in checkouts:
        if not (checkout / "src" / "cachegate").is_dir():
            raise SystemExit(f"compare: {checkout} is not a checkout of cachegate (no src/cachegate)")

    work = Path(tempfile.mkdtemp(prefix="cachegate-compare-"))
    upstream_port = free_port()
    base_config = write_config(work, upstream_port)
    store_url = f"sqlite:///{work / 'control.db'}"
    key = asyncio.run(create_key(store_url))
    script = work / "bench.lua"
    script.write_text(WRK_SCRIPT)
    fake_upstream = ["fake-upstream", "--port", str(upstream_port)]
    upstream = subprocess.Popen(
        ["taskset", "-c", "1", sys.executable, "-m", "cachegate", "-c", str(base_config), *fake_upstream],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    servers: list[tuple[int, int, subprocess.Popen[bytes]]] = []  # position, port, process
    try:
        for position, checkout in enumerate(checkouts):
            config = work / f"gateway-{position}.yaml"  # its own index and journal, the shared store and key
            config.write_text(
                base_config.read_text().replace(
                    f"data_dir: {work}", f"data_dir: {work / f'gateway-{position}'}\ncontrol_store_url: {store_url}"
                )
            )
            port = free_port()
            servers.append((position, port, gateway(checkout, config, port, settings if position else {})))
        wait_ready(f"http://127.0.0.1:{upstream_port}/v1/models", upstream)
        for _, port, process in servers:
            wait_ready(f"http://127.0.0.1:{port}/healthz", process)
            url, warm = f"http://127.0.0.1:{port}/v1/chat/completions", chat_body("bench", stream=False, marked=True)
            post(url, warm, key)  # writes the entry the measured requests read
            if post(url, warm, key)["usage"]["cache_read_input_tokens"] == 0:
                raise SystemExit("compare: the warm-up did not produce a cache hit")

        print(f"A = {checkouts[0]}")
        print(f"B = {' '.join([str(checkouts[1]), *(f'{name}={value}' for name, value in args.set)])}")
        print(f"{'mode':<7}{'c':>4}{'':>3} | {'req/s':>7}{'p50 ms':>8}{'CPU ms':>8} | {'B won':>5}")
        for mode in ("json", "stream"):
            body = work / f"{mode}.json"
            body.write_bytes(chat_body("bench", mode == "stream", marked=True))
            for connections in args.connections:
                runs: list[list[tuple[Run, float]]] = [[], []]
                for round_ in range(args.rounds):
                    for position, port, process in servers if round_ % 2 == 0 else reversed(servers):
                        url = f"http://127.0.0.1:{port}/v1/chat/completions"
                        runs[position].append(measure(url, body, key, connections, args.duration, script, process.pid))
                won = sum(after.rps > before.rps for (before, _), (after, _) in zip(*runs, strict=True))
                for position, done in enumerate(runs):
                    rps = statistics.median(run.rps for run, _ in done)
                    p50 = statistics.median(run.p50_ms for run, _ in done)
                    cpu = statistics.median(cpu for _, cpu in done)
                    score = f"{won}/{args.rounds}" if position else ""
                    side = "AB"[position]
                    print(f"{mode:<7}{connections:>4}{side:>3} | {rps:>7.0f}{p50:>8.2f}{cpu:>8.3f} | {score:>5}")
        print(f"medians of {args.rounds} interleaved runs of {args.duration} s; CPU ms: gateway CPU a request;")
        print("B won: rounds in which B served more requests/s than A (its run next to A's in time)")
    finally:
        stop(*(process for _, _, process in servers), upstream)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

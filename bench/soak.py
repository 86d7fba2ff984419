"""Soak benchmark: the gateway at 70% of its measured peak for a long while, bounded or not.

Starts the fake upstream and the gateway as ``bench/bench.py`` does (the gateway pinned to core 0,
the upstream and ``wrk`` on core 1), measures the peak (``wrk``, 32 connections, no pacing), then
drives the gateway at 70% of it for ``--minutes`` (default 30). The load is a cache-hit steady
state, half JSON and half streamed requests of bench.py's ~8.5 KB marked chat body.

``wrk`` has no fixed-rate mode, so the rate is held with its ``delay()`` hook: each connection
waits between requests; two 10-second runs set the wait, and it is corrected after every minute by the rate that minute
achieved. Each minute is one ``wrk`` run; a table line per minute gives requests, the achieved
rate, errors (non-200 answers and socket errors), p50/p99 latency and the gateway's RSS. The
verdict at the end compares the RSS at the start (after the peak run) with the end (flat within 10% is the
target) and sums the errors.

    .venv/bin/python bench/soak.py --minutes 30
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import Run, chat_body, create_key, free_port, post, stop, wait_ready, write_config, wrk

CONNECTIONS = 32
LOAD_FRACTION = 0.7
RSS_TOLERANCE = 0.10
CALIBRATION_ROUNDS = 2  # 10-second paced runs that set the pause before the first minute

# bench.py's script, with the two request bodies alternated and a pause before each request
# (wrk's ``delay`` hook, in ms, from BENCH_DELAY_MS) that holds the rate below the peak.
SOAK_SCRIPT = """
local function read(path)
  local file = io.open(path, "rb")
  local data = file:read("*a")
  file:close()
  return data
end
local bodies = {read(os.getenv("BENCH_BODY")), read(os.getenv("SOAK_STREAM_BODY"))}
local pause = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")}
local sent = 0
function request()
  sent = sent + 1
  return wrk.format("POST", nil, headers, bodies[sent % 2 + 1])
end
function delay()
  return pause
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "errors": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def rss_mib(pid: int) -> float:
    """The process's resident set, from /proc (VmRSS, in kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"soak: no VmRSS for process {pid}")


def paced_run(url: str, bodies: tuple[Path, Path], key: str, seconds: int, script: Path, delay_ms: int) -> Run:
    """One ``wrk`` run of ``seconds`` with each connection pausing ``delay_ms`` before each request."""
    saved = {name: os.environ.get(name) for name in ("SOAK_STREAM_BODY", "BENCH_DELAY_MS")}
    os.environ["SOAK_STREAM_BODY"], os.environ["BENCH_DELAY_MS"] = str(bodies[1]), str(delay_ms)
    try:
        return wrk(url, bodies[0], key, CONNECTIONS, seconds, script)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def next_delay(delay_ms: int, achieved_rps: float, target_rps: float) -> int:
    """The pause that brings the next minute's rate to ``target_rps``: each connection's cycle
    (its latency plus its pause) stretched or shrunk by the ratio of the achieved rate to the target."""
    cycle_ms = CONNECTIONS * 1000 / max(achieved_rps, 1.0)
    latency_ms = max(cycle_ms - delay_ms, 0.0)
    wanted_cycle_ms = CONNECTIONS * 1000 / target_rps
    return max(round(wanted_cycle_ms - latency_ms), 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=int, default=30, help="how long to soak, in whole minutes (default 30)")
    parser.add_argument("--peak-seconds", type=int, default=15, help="how long the peak is measured (default 15)")
    args = parser.parse_args()
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(f"soak: '{tool}' is needed (Debian: apt-get install {tool})")
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("soak: needs two cores (gateway on one, upstream and load on the other)")

    cachegate = str(Path(sys.executable).with_name("cachegate"))
    work = Path(tempfile.mkdtemp(prefix="cachegate-soak-"))
    upstream_port, gateway_port = free_port(), free_port()
    config = write_config(work, upstream_port)
    key = asyncio.run(create_key(f"sqlite:///{work / 'control.db'}"))
    script = work / "soak.lua"
    script.write_text(SOAK_SCRIPT)
    bodies = (work / "json.json", work / "stream.json")
    bodies[0].write_bytes(chat_body("bench", stream=False, marked=True))
    bodies[1].write_bytes(chat_body("bench", stream=True, marked=True))
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    upstream = subprocess.Popen(
        ["taskset", "-c", "1", cachegate, "-c", str(config), "fake-upstream", "--port", str(upstream_port)], **quiet
    )
    gateway = subprocess.Popen(
        ["taskset", "-c", "0", cachegate, "-c", str(config), "serve", "--port", str(gateway_port)], **quiet
    )
    try:
        wait_ready(f"http://127.0.0.1:{upstream_port}/v1/models", upstream)
        wait_ready(f"http://127.0.0.1:{gateway_port}/healthz", gateway)
        url = f"http://127.0.0.1:{gateway_port}/v1/chat/completions"
        post(url, bodies[0].read_bytes(), key)  # the write; every request after it reads
        if post(url, bodies[0].read_bytes(), key)["usage"]["cache_read_input_tokens"] == 0:
            raise SystemExit("soak: the warm-up did not produce a cache hit")

        peak = paced_run(url, bodies, key, args.peak_seconds, script, delay_ms=0)
        target = peak.rps * LOAD_FRACTION
        print(
            f"peak: {peak.rps:.0f} req/s at {CONNECTIONS} connections (p99 {peak.p99_ms:.1f} ms, "
            f"{peak.errors} errors); soaking at {LOAD_FRACTION:.0%} of it, {target:.0f} req/s, "
            f"for {args.minutes} min"
        )
        header = f"{'minute':>6} | {'requests':>9}{'req/s':>8}{'errors':>8} | {'p50 ms':>8}{'p99 ms':>8}"
        header += f" | {'RSS MiB':>8}"
        print(header)
        print("-" * len(header))
        delay_ms = next_delay(0, peak.rps, target)
        for _ in range(CALIBRATION_ROUNDS):  # latency at the peak is queueing: the first guess runs fast
            delay_ms = next_delay(delay_ms, paced_run(url, bodies, key, 10, script, delay_ms).rps, target)
        start_rss = rss = rss_mib(gateway.pid)  # after the warm-up and the peak run
        errors = 0
        for minute in range(1, args.minutes + 1):
            run = paced_run(url, bodies, key, 60, script, delay_ms)
            rss = rss_mib(gateway.pid)
            errors += run.errors
            print(
                f"{minute:>6} | {run.requests:>9}{run.rps:>8.0f}{run.errors:>8} | "
                f"{run.p50_ms:>8.2f}{run.p99_ms:>8.2f} | {rss:>8.1f}",
                flush=True,
            )
            delay_ms = next_delay(delay_ms, run.rps, target)
        growth = (rss - start_rss) / start_rss
        verdict = "flat" if abs(growth) <= RSS_TOLERANCE else "NOT flat"
        print(
            f"RSS at the start (after the peak run): {start_rss:.1f} MiB, at the end: {rss:.1f} MiB "
            f"({growth:+.1%}: {verdict} within {RSS_TOLERANCE:.0%}); errors: {errors}"
        )
    finally:
        stop(gateway, upstream)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

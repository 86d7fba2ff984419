"""Benchmark: the gateway against the fake upstream, on a cache-hit steady state.

Starts the fake upstream and the gateway as separate processes (the gateway pinned to core 0,
the upstream and the load generator ``wrk`` on core 1), sends a ~8.5 KB chat body whose system
prompt carries a 1h marker, and reports, for JSON and streaming (20 chunks) at concurrency 1
and 32: requests/s, p50/p99 latency through the gateway and straight to the upstream, the
added latency, and the gateway's CPU time per request (from /proc, user + system).

For reference it measures, in the same run and on the same core, a bare proxy (bench/
bare_proxy.py: the same server and upstream client, JSON parsing and nothing else), so that
what the machine costs can be told apart from what the cache layer costs.

The gateway runs twice, side by side on the same data: as configured by default, with the ledger
journal on (one synced write per group commit, before each response's last byte), and with the
journal off (``ledger.journal.enabled: false``: rows wait in memory, as before issue 15). The two
are measured in interleaved rounds (on, off, off, on, on, off, ...) and their medians reported, so
that load from other processes on the machine falls on both sides alike. The last lines give the
gateway against the bare proxy as ratios (requests/s and CPU per request, journal on and off), and
the journal's cost in throughput and latency per mode and concurrency.

    make bench                       # or: .venv/bin/python bench/bench.py --duration 10 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachegate.store.factory import open_store

WRK_SCRIPT = """
local body_file = io.open(os.getenv("BENCH_BODY"), "rb")
wrk.method = "POST"
wrk.body = body_file:read("*a")
body_file:close()
wrk.headers["Content-Type"] = "application/json"
local key = os.getenv("BENCH_KEY")
if key and key ~= "" then wrk.headers["Authorization"] = "Bearer " .. key end
local bad = 0
function response(status, headers, body)
  if status ~= 200 then bad = bad + 1 end
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "errors": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


@dataclass(frozen=True)
class Run:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


@dataclass(frozen=True)
class Median:
    """The medians of interleaved runs of one server, and its CPU milliseconds per request."""

    rps: float
    p50_ms: float
    p99_ms: float
    cpu_ms: float
    errors: int

    @classmethod
    def of(cls, runs: list[tuple[Run, float]]) -> Median:
        return cls(
            rps=statistics.median(run.rps for run, _ in runs),
            p50_ms=statistics.median(run.p50_ms for run, _ in runs),
            p99_ms=statistics.median(run.p99_ms for run, _ in runs),
            cpu_ms=statistics.median(cpu for _, cpu in runs),
            errors=sum(run.errors for run, _ in runs),
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def chat_body(model: str, stream: bool, marked: bool) -> bytes:
    rules = " ".join(f"Rule {i}: answer precisely, cite section {i % 17}, never invent facts." for i in range(118))
    system: dict[str, Any] = {"type": "text", "text": f"You are the support assistant of ExampleCorp. {rules}"}
    if marked:
        system["cache_control"] = {"type": "ephemeral", "ttl": "1h"}
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "system", "content": [system]},
            {"role": "user", "content": "How do I reset my password? Please answer in three short steps."},
        ],
        "max_tokens": 64,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body).encode()


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"bench: {url} exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):  # TimeoutError: a busy machine
            time.sleep(0.1)
    raise SystemExit(f"bench: {url} did not come up in {timeout} s")


def wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"bench: the process for port {port} exited with code {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"bench: nothing listens on port {port} after {timeout} s")


def measure(
    url: str, body: Path, key: str, connections: int, seconds: int, script: Path, pid: int
) -> tuple[Run, float]:
    """A wrk run against ``url`` and the CPU milliseconds process ``pid`` spent per request."""
    before = cpu_seconds(pid)
    run = wrk(url, body, key, connections, seconds, script)
    return run, (cpu_seconds(pid) - before) / max(run.requests, 1) * 1000


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def wrk(url: str, body_file: Path, key: str, connections: int, seconds: int, script: Path) -> Run:
    env = {**os.environ, "BENCH_BODY": str(body_file), "BENCH_KEY": key}
    command = [
        "taskset",
        "-c",
        "1",
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    result = json.loads(output.strip().splitlines()[-1])
    return Run(
        requests=result["requests"],
        seconds=result["duration_us"] / 1e6,
        p50_ms=result["p50_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
        errors=result["errors"],
    )


async def create_key(store_url: str) -> str:
    store = await open_store(store_url)
    try:
        await store.migrate()
        principal = await store.create_principal("bench")
        _, secret = await store.create_api_key(principal.id)
        return secret
    finally:
        await store.aclose()


def post(url: str, body: bytes, key: str) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=body, headers={"content-type": "application/json", "authorization": f"Bearer {key}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def stop(*processes: subprocess.Popen[bytes]) -> None:
    """Interrupt the processes together, then wait for each (killed after 10 s)."""
    for process in processes:
        process.send_signal(signal.SIGINT)
    for process in processes:
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


def write_config(work: Path, upstream_port: int) -> Path:
    """The gateway's configuration for a benchmark: one cached model on the fake upstream."""
    config = work / "config.yaml"
    config.write_text(
        f"""
data_dir: {work}
endpoints:
  - name: fake
    base_url: http://127.0.0.1:{upstream_port}/v1
models:
  - alias: bench
    endpoint: fake
    upstream_model: qwen3-fake
    input_price: "0.000001"
    output_price: "0.000002"
    cache: {{min_prefix_tokens: 1024}}
"""
    )
    return config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="whole seconds per run (default 10)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved runs of the journal on and off per cell, medians (default 3)"
    )
    args = parser.parse_args()
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench: '{tool}' is needed (Debian: apt-get install {tool})")
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("bench: needs two cores (gateway on one, upstream and load on the other)")

    cachegate = str(Path(sys.executable).with_name("cachegate"))
    work = Path(tempfile.mkdtemp(prefix="cachegate-bench-"))
    upstream_port, gateway_port, bare_port, unjournaled_port = free_port(), free_port(), free_port(), free_port()
    config = write_config(work, upstream_port)
    key = asyncio.run(create_key(f"sqlite:///{work / 'control.db'}"))
    script = work / "bench.lua"
    script.write_text(WRK_SCRIPT)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    upstream = subprocess.Popen(
        ["taskset", "-c", "1", cachegate, "-c", str(config), "fake-upstream", "--port", str(upstream_port)], **quiet
    )
    gateway = subprocess.Popen(
        ["taskset", "-c", "0", cachegate, "-c", str(config), "serve", "--port", str(gateway_port)], **quiet
    )
    unjournaled = subprocess.Popen(
        ["taskset", "-c", "0", cachegate, "-c", str(config), "serve", "--port", str(unjournaled_port)],
        env={**os.environ, "CACHEGATE_LEDGER__JOURNAL__ENABLED": "false"},
        **quiet,
    )
    bare = subprocess.Popen(
        [
            "taskset",
            "-c",
            "0",
            sys.executable,
            str(Path(__file__).with_name("bare_proxy.py")),
            f"http://127.0.0.1:{upstream_port}/v1",
            str(bare_port),
        ],
        **quiet,
    )
    try:
        wait_ready(f"http://127.0.0.1:{upstream_port}/v1/models", upstream)
        wait_ready(f"http://127.0.0.1:{gateway_port}/healthz", gateway)
        wait_ready(f"http://127.0.0.1:{unjournaled_port}/healthz", unjournaled)
        wait_port(bare_port, bare)
        gateway_url = f"http://127.0.0.1:{gateway_port}/v1/chat/completions"
        upstream_url = f"http://127.0.0.1:{upstream_port}/v1/chat/completions"
        bare_url = f"http://127.0.0.1:{bare_port}/v1/chat/completions"
        unjournaled_url = f"http://127.0.0.1:{unjournaled_port}/v1/chat/completions"

        warm = chat_body("bench", stream=False, marked=True)
        first = post(gateway_url, warm, key)["usage"]
        second = post(gateway_url, warm, key)["usage"]
        size = len(warm)
        print(
            f"body: {size} bytes; first request wrote {first['cache_creation_input_tokens']} tokens, "
            f"the second read {second['cache_read_input_tokens']} (prompt_tokens {second['prompt_tokens']})"
        )
        if second["cache_read_input_tokens"] == 0:
            raise SystemExit("bench: the warm-up did not produce a cache hit")

        header = (
            f"{'mode':<7}{'conc':>5} | {'gw req/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'CPU ms':>8}"
            f" | {'no-jnl req/s':>12}{'p50 ms':>8}{'p99 ms':>8}{'CPU ms':>8}"
            f" | {'bare req/s':>10}{'p50 ms':>8}{'CPU ms':>8} | {'up req/s':>9}{'p50 ms':>8}"
            f" | {'added p50 ms':>12} | {'errors':>6}"
        )
        print(header)
        print("-" * len(header))
        costs: list[str] = []
        ratios: list[str] = []
        for stream in (False, True):
            mode = "stream" if stream else "json"
            gw_body, up_body = work / f"{mode}-gw.json", work / f"{mode}-up.json"
            gw_body.write_bytes(chat_body("bench", stream, marked=True))
            up_body.write_bytes(chat_body("qwen3-fake", stream, marked=False))
            for connections in (1, 32):
                direct = wrk(upstream_url, up_body, "", connections, args.duration, script)
                reference, bare_cpu = measure(bare_url, up_body, "", connections, args.duration, script, bare.pid)
                on_runs: list[tuple[Run, float]] = []
                off_runs: list[tuple[Run, float]] = []
                for round_ in range(args.rounds):  # on, off, off, on, ...: drifts in the load fall on both
                    pair = [(gateway, gateway_url, on_runs), (unjournaled, unjournaled_url, off_runs)]
                    for process, url, runs in pair if round_ % 2 == 0 else reversed(pair):
                        runs.append(measure(url, gw_body, key, connections, args.duration, script, process.pid))
                through, off = Median.of(on_runs), Median.of(off_runs)
                errors = through.errors + reference.errors + direct.errors + off.errors
                gateway_cells = f"{through.rps:>9.0f}{through.p50_ms:>8.2f}{through.p99_ms:>8.2f}{through.cpu_ms:>8.3f}"
                gateway_cells += f" | {off.rps:>12.0f}{off.p50_ms:>8.2f}{off.p99_ms:>8.2f}{off.cpu_ms:>8.3f}"
                ratios.append(
                    f"{mode} c={connections}: req/s {through.rps / reference.rps:.2f}x"
                    f" ({off.rps / reference.rps:.2f}x no-jnl), CPU per request {through.cpu_ms / bare_cpu:.2f}x"
                    f" ({off.cpu_ms / bare_cpu:.2f}x no-jnl)"
                )
                costs.append(
                    f"{mode} c={connections}: {(1 - through.rps / off.rps) * 100:.1f}% fewer req/s,"
                    f" p50 {through.p50_ms - off.p50_ms:+.2f} ms, p99 {through.p99_ms - off.p99_ms:+.2f} ms,"
                    f" CPU per request {(through.cpu_ms / off.cpu_ms - 1) * 100:+.1f}%"
                )
                bare_cells = f"{reference.rps:>10.0f}{reference.p50_ms:>8.2f}{bare_cpu:>8.3f}"
                upstream_cells = f"{direct.rps:>9.0f}{direct.p50_ms:>8.2f}"
                added = through.p50_ms - direct.p50_ms
                print(
                    f"{mode:<7}{connections:>5} | {gateway_cells} | {bare_cells} | {upstream_cells}"
                    f" | {added:>12.2f} | {errors:>6}"
                )
        print("gw against bare:", "; ".join(ratios))
        print("journal cost (gw with the journal, fsync per group, against no-jnl):", "; ".join(costs))
        print("(CPU per request: the cost where the gateway has a core to itself and is bound by it; it moves")
        print("less than req/s when other processes share the core)")
        print(f"gw and no-jnl: medians of {args.rounds} interleaved runs of {args.duration} s each;")
        print("gw = cachegate (ledger journal on, fsync per group), no-jnl = cachegate with the journal off,")
        print("bare = bare proxy (no cache work), up = the fake upstream directly;")
        print("CPU ms = process CPU time (user + system) per request; gateway and bare proxy on core 0,")
        print("upstream and wrk on core 1; added p50 = gateway p50 - upstream p50.")
    finally:
        stop(gateway, unjournaled, bare, upstream)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

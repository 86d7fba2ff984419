"""``cachegate serve`` with no config (the embedded demo) as a subprocess, for the tests of tests/cli."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

import log_scan


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Started:
    """A ``cachegate serve`` that is up: the process, what it printed while starting, its base URL and demo key."""

    process: subprocess.Popen[str]
    output: str
    base_url: str
    key: str


def start_demo(folder: Path, env: dict[str, str], port: int) -> Started:
    """``cachegate serve`` (the demo) in ``folder``, returned once it serves."""
    process = subprocess.Popen(
        [sys.executable, "-m", "cachegate", "serve", "--port", str(port)],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    output = ""
    deadline = time.monotonic() + 60
    while "Application startup complete" not in output:
        line = process.stdout.readline()
        if not line:
            pytest.fail(f"cachegate serve exited early:\n{output}")
        output += line
        assert time.monotonic() < deadline, output
    key = re.search(r"API key\s*:\s*(cg-\S+)", output)
    base_url = re.search(r"base URL\s*:\s*(\S+)", output)
    assert key and base_url, output
    return Started(process, output, base_url.group(1), key.group(1))


@contextmanager
def running_demo(folder: Path) -> Iterator[tuple[str, str]]:
    """``cachegate serve`` in ``folder`` with no config; yields its base URL and demo key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHEGATE_")}
    env["CACHEGATE_DEMO__PORT"] = str(free_port())
    started = start_demo(folder, env, free_port())
    process = started.process
    try:
        yield started.base_url, started.key
    finally:
        process.send_signal(signal.SIGINT)
        status = process.wait(30)
        assert process.stdout is not None
        log_scan.keep("cachegate serve (demo)", [*started.output.splitlines(), *process.stdout.read().splitlines()])
        assert status == 130  # a clean shutdown on Ctrl-C, with the conventional status

"""``cachegate`` commands as subprocesses whose output is read in the background, for tests that wait on it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

import log_scan


def cachegate(*args: str) -> list[str]:
    return [sys.executable, "-m", "cachegate", *args]


class Running:
    """A ``cachegate`` process; every line it prints is kept, so a test can wait for one without blocking."""

    def __init__(self, *args: str, cwd: Path | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CACHEGATE_")}
        self.process = subprocess.Popen(
            cachegate(*args), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        log_scan.keep(" ".join(args), self.lines)
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 60.0, start: int = 0) -> re.Match[str]:
        """The first match of ``pattern`` in a line printed from line ``start`` on; fails on exit or timeout."""
        deadline = time.monotonic() + timeout
        seen = start
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    if match := re.search(pattern, line):
                        return match
                seen = len(self.lines)
                if not self._reader.is_alive():
                    pytest.fail(f"{self.process.args} exited waiting for {pattern!r}:\n{''.join(self.lines)}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pytest.fail(f"no {pattern!r} within {timeout} s:\n{''.join(self.lines)}")
                self._changed.wait(remaining)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        status = self.process.wait(30)
        self._reader.join(5)
        return status


def create_key(config: Path, principal: str = "acme") -> str:
    """A principal and a key of it, made with the CLI; returns the secret."""
    subprocess.run(cachegate("-c", str(config), "principal", "create", principal), check=True, capture_output=True)
    created = subprocess.run(
        cachegate("-c", str(config), "key", "create", principal), check=True, capture_output=True, text=True
    ).stdout
    secret = re.search(r"secret\s+(\S+)", created)
    assert secret, created
    return secret.group(1)


def cached_model_config(work: Path, upstream_port: int, floor: int, extra: str = "") -> Path:
    """``work/cachegate.yaml``: model ``qwen3`` on the fake upstream at ``upstream_port``, cached above
    ``floor`` tokens, its data under ``work/data``; ``extra`` is more YAML (store and index URLs, ...)."""
    config = work / "cachegate.yaml"
    config.write_text(
        f"""
data_dir: {work / "data"}
endpoints:
  - {{name: fake, base_url: "http://127.0.0.1:{upstream_port}/v1"}}
models:
  - alias: qwen3
    endpoint: fake
    upstream_model: m
    tokenizer: qwen3
    cache: {{min_prefix_tokens: {floor}}}
{extra}
"""
    )
    return config


@contextmanager
def serving_replicas(configs: Sequence[Path], upstream_port: int, ports: Sequence[int]) -> Iterator[None]:
    """The fake upstream on ``upstream_port`` and one ``cachegate serve`` per configuration on its port,
    all started and ready; every process stopped on leaving."""
    upstream = Running("-c", str(configs[0]), "fake-upstream", "--port", str(upstream_port))
    replicas = [Running("-c", str(c), "serve", "--port", str(p)) for c, p in zip(configs, ports, strict=True)]
    try:
        upstream.wait_for("fake upstream listening")
        for replica in replicas:
            replica.wait_for("Application startup complete")
        yield
    finally:
        for replica in replicas:
            replica.stop()
        upstream.stop()

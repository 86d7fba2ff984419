"""Redis fixtures shared by the suites that need a real server (cache index, e2e).

Use them from a suite's conftest.py: ``from redis_server import redis_server, redis_url``.

The server is ``CACHEGATE_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``). Every test works
under a key prefix of its own (``cachegate-test-<random hex>``, passed in the URL's ``key_prefix``
query option), so tests never see each other's keys, and its keys are deleted after it.
If the server cannot be reached the tests are skipped, except under CI (``CI=true``), where they
fail: a CI run must never pass by silently skipping its Redis tests.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

SERVER_URL = os.environ.get("CACHEGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class RedisServer:
    """The test server: hands out fresh key prefixes and deletes what was written under them."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)

    @property
    def address(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        return parts.hostname or "127.0.0.1", parts.port or 6379

    def probe(self) -> None:
        """Raise if the server cannot be reached."""
        self._client.ping()

    def fresh_prefix(self) -> str:
        return f"cachegate-test-{secrets.token_hex(6)}"

    def index_url(self, prefix: str, url: str | None = None) -> str:
        """``url`` (default: the server's) with ``key_prefix=prefix`` in its query."""
        parts = urlsplit(url or self.url)
        query = f"{parts.query}&" if parts.query else ""
        return parts._replace(query=f"{query}key_prefix={prefix}").geturl()

    def keys(self, prefix: str) -> list[bytes]:
        return list(self._client.scan_iter(match=f"{prefix}:*", count=1000))

    def drop(self, prefix: str) -> None:
        keys = self.keys(prefix)
        for start in range(0, len(keys), 1000):
            self._client.delete(*keys[start : start + 1000])

    def close(self) -> None:
        self._client.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The Redis test server; skips (fails under CI=true) when it is unreachable."""
    server = RedisServer(SERVER_URL)
    try:
        server.probe()
    except redis.RedisError as exc:
        host, port = server.address
        message = f"Redis is not reachable at {host}:{port}: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """A Redis cache index URL under a key prefix of this test's own, emptied after the test."""
    prefix = redis_server.fresh_prefix()
    yield redis_server.index_url(prefix)
    redis_server.drop(prefix)


class LocalCluster:
    """A Redis Cluster of three primaries, started by the test session in a folder of its own."""

    def __init__(self, folder: Path, ports: list[int]) -> None:
        self.folder = folder
        self.ports = ports
        self._processes: list[subprocess.Popen[bytes]] = []

    def index_url(self, prefix: str) -> str:
        """The cluster's cache index URL under ``prefix``."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]}?key_prefix={prefix}"

    def drop(self, prefix: str) -> None:
        client = redis.RedisCluster(host="127.0.0.1", port=self.ports[0], socket_timeout=5)
        try:
            for key in client.scan_iter(match=f"{prefix}:*", count=1000):
                client.delete(key)
        finally:
            client.close()

    def start(self) -> LocalCluster:
        for port in self.ports:
            node = self.folder / str(port)
            node.mkdir()
            self._processes.append(
                subprocess.Popen(
                    [
                        "redis-server",
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        str(node),
                        "--logfile",
                        str(node / "redis.log"),
                    ],
                    stdout=subprocess.DEVNULL,
                )
            )
        nodes = [redis.Redis(port=port, socket_timeout=5) for port in self.ports]
        _wait_until(lambda: all(_answers(node) for node in nodes))
        addresses = [f"127.0.0.1:{port}" for port in self.ports]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
        )
        _wait_until(lambda: all(node.cluster("info")["cluster_state"] == "ok" for node in nodes))
        for node in nodes:
            node.close()
        return self

    def stop(self) -> None:
        for process in self._processes:
            process.terminate()
        for process in self._processes:
            process.wait(timeout=10)


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _answers(node: redis.Redis) -> bool:
    try:
        return bool(node.ping())
    except redis.ConnectionError:
        return False


def _wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the local Redis Cluster did not come up")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A three-primary Redis Cluster of this session's own (``redis-server`` must be installed);
    skips without it (fails under CI=true)."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        message = "redis-server and redis-cli are needed to start a local Redis Cluster"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    ports: list[int] = []
    while len(ports) < 3:
        port = secrets.randbelow(10_000) + 20_000
        # A cluster node also listens on its port + 10000 (its bus), which must be free too.
        if port not in ports and _free(port) and _free(port + 10_000):
            ports.append(port)
    cluster = LocalCluster(tmp_path_factory.mktemp("redis-cluster"), ports)
    try:
        yield cluster.start()
    finally:
        cluster.stop()

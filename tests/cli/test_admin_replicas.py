"""Changes made through the admin API reach every replica (SPEC §13): two ``cachegate serve``
processes on one PostgreSQL control store. What is written through one is served by it at once,
and by the other within ``catalog_refresh_seconds`` (its next catalog reload): a model added, a
key revoked. Each wait polls up to a deadline; the time it took is printed."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from .demo_server import free_port
from .gateway_process import cachegate, create_key, serving_replicas
from pg import PgServer

REFRESH_SECONDS = 2.0
SLACK_SECONDS = 5.0  # a reload's own time, and a busy machine's


@dataclass
class Replicas:
    urls: list[str]
    admin_key: str
    tenant_key: str
    upstream_url: str


def write_config(work: Path, store_url: str, index_url: str) -> Path:
    config = work / "cachegate.yaml"
    config.write_text(
        f"""
data_dir: {work / "data"}
control_store_url: "{store_url}"
cache_index_url: "{index_url}"
catalog_refresh_seconds: {REFRESH_SECONDS}
"""
    )
    return config


@pytest.fixture
def replicas(tmp_path: Path, pg_server: PgServer) -> Iterator[Replicas]:
    store_url, index_url = pg_server.create_database(), pg_server.create_database()
    folders = [tmp_path / f"replica-{n}" for n in range(2)]
    for folder in folders:
        folder.mkdir()
    configs = [write_config(folder, store_url, index_url) for folder in folders]
    upstream_port = free_port()
    ports = [free_port() for _ in folders]
    with serving_replicas(configs, upstream_port, ports):
        tenant_key = create_key(configs[0])
        created = subprocess.run(
            cachegate("-c", str(configs[0]), "key", "create", "acme", "--admin"),
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        admin_key = re.search(r"secret\s+(\S+)", created)
        assert admin_key, created
        yield Replicas(
            [f"http://127.0.0.1:{port}" for port in ports],
            admin_key.group(1),
            tenant_key,
            f"http://127.0.0.1:{upstream_port}/v1",
        )


def chat(base_url: str, key: str, model: str) -> int:
    body = {"model": model, "messages": [{"role": "user", "content": "Hello"}]}
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(f"{base_url}/v1/chat/completions", json=body, headers=headers, timeout=30).status_code


def seconds_until(condition: Callable[[], bool], deadline_seconds: float) -> float:
    """How long until ``condition`` held, polling; fails past the deadline."""
    started = time.monotonic()
    while not condition():
        elapsed = time.monotonic() - started
        assert elapsed < deadline_seconds, f"not true within {deadline_seconds} s"
        time.sleep(0.1)
    return time.monotonic() - started


@pytest.mark.postgres
def test_a_change_through_one_replica_reaches_the_other_within_the_refresh(replicas: Replicas) -> None:
    writer, other = replicas.urls
    with httpx.Client(base_url=writer, headers={"Authorization": f"Bearer {replicas.admin_key}"}) as admin:
        assert chat(other, replicas.tenant_key, "added") == 404
        assert chat(other, replicas.tenant_key, "missing") == 404  # the key is now cached by the other replica

        endpoint = admin.put("/admin/v1/endpoints/upstream", json={"base_url": replicas.upstream_url})
        model = admin.put("/admin/v1/models/added", json={"endpoints": ["upstream"], "upstream_model": "m"})
        assert (endpoint.status_code, model.status_code) == (200, 200)
        assert chat(writer, replicas.tenant_key, "added") == 200  # at once where it was written
        model_seconds = seconds_until(
            lambda: chat(other, replicas.tenant_key, "added") == 200, REFRESH_SECONDS + SLACK_SECONDS
        )

        key_id = admin.get("/admin/v1/keys", params={"principal": "acme"}).json()["data"][0]["id"]
        revoked = admin.post(f"/admin/v1/keys/{key_id}/revoke")
        assert revoked.status_code == 200 and revoked.json()["admin"] is False
        assert chat(writer, replicas.tenant_key, "added") == 401  # at once where it was revoked
        revocation_seconds = seconds_until(
            lambda: chat(other, replicas.tenant_key, "added") == 401, REFRESH_SECONDS + SLACK_SECONDS
        )

    print(
        f"\ncatalog_refresh_seconds {REFRESH_SECONDS}: a model added on one replica served by the other after "
        f"{model_seconds:.2f} s, a key revoked refused there after {revocation_seconds:.2f} s"
    )

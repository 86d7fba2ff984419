"""Start-up failures that do stop ``cachegate serve`` print one line naming the setting, not a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .gateway_process import cachegate


def serve(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHEGATE_")}
    return subprocess.run(
        cachegate("-c", str(config), "serve", *args), env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port something else listens on."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        yield taken.getsockname()[1]


def test_an_unreadable_tokenizer_folder_is_one_line_naming_the_tokenizer(tmp_path: Path) -> None:
    config = tmp_path / "cachegate.yaml"
    config.write_text(
        f"""
data_dir: {tmp_path / "data"}
tokenizers:
  qwen3: {{kind: builtin, name: qwen3}}
  mine: {{kind: hf, path: {tmp_path / "missing"}}}
"""
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHEGATE_")}
    done = subprocess.run(
        cachegate("-c", str(config), "serve", "--port", "0"), env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"cachegate: tokenizers.mine: cannot read {tmp_path / 'missing' / 'tokenizer.json'}: No such file or directory"
    ]


def test_a_port_in_use_is_one_line_before_anything_is_opened(tmp_path: Path, taken_port: int) -> None:
    config = tmp_path / "cachegate.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\n")
    done = serve(config, "--port", str(taken_port))
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"cachegate: listen (--host/--port): cannot listen on 127.0.0.1:{taken_port}: Address already in use"
    ]
    assert not (tmp_path / "data").exists()  # no store, index or journal was opened


def test_the_demo_upstream_port_in_use_is_one_line_naming_it(tmp_path: Path, taken_port: int) -> None:
    config = tmp_path / "cachegate.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\ndemo: {{enabled: true, port: {taken_port}}}\n")
    done = serve(config, "--port", "0")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"cachegate: demo.port: cannot listen on 127.0.0.1:{taken_port}: Address already in use"
    ]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            'control_store_url: "mysql://db/cachegate"',
            "cachegate: invalid configuration: control_store_url: unsupported",
        ),
        ('cache_index_url: "mysql://db/cachegate"', "cachegate: invalid configuration: cache_index_url: unsupported"),
        ("listen: {port: http}", "cachegate: invalid configuration: listen.port: Input should be a valid integer"),
        ("listen: {port: 80", "cachegate: config file"),
    ],
)
def test_an_invalid_setting_is_one_line_naming_it(tmp_path: Path, line: str, expected: str) -> None:
    config = tmp_path / "cachegate.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\n{line}\n")
    done = serve(config, "--port", "0")
    assert done.returncode == 2
    [message] = done.stderr.splitlines()
    assert message.startswith(expected)

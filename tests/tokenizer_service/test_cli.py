"""``cachegate tokenizer serve``: every configured tokenizer, served under its name."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from importlib import resources
from pathlib import Path

import pytest

from cachegate import cli as cachegate_cli
from cachegate.tokenizer_service import cli
from cachegate.tokens.base import TokenizerLoadError
from cachegate.tokens.counter import ChatTokenCounter
from cachegate.tokens.registry import TokenizerSpec
from cachegate.tokens.shipped import qwen3_files


@pytest.fixture
def model_folder(tmp_path: Path) -> Path:
    """A local Hugging Face model folder holding the shipped Qwen3 tokenizer files."""
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "tokenizer.json").write_bytes(qwen3_files().tokenizer_json)
    config = resources.files("cachegate.tokens").joinpath("data", "qwen3", "tokenizer_config.json").read_bytes()
    (folder / "tokenizer_config.json").write_bytes(config)
    return folder


def test_serve_takes_host_and_port() -> None:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())

    defaults = parser.parse_args(["tokenizer", "serve"])
    chosen = parser.parse_args(["tokenizer", "serve", "--host", "0.0.0.0", "--port", "9000"])

    assert (defaults.host, defaults.port, defaults.run) == ("127.0.0.1", cli.DEFAULT_PORT, cli.run)
    assert (chosen.host, chosen.port) == ("0.0.0.0", 9000)


def test_each_tokenizer_is_served_under_its_name_with_its_source(
    model_folder: Path, qwen3: ChatTokenCounter, tmp_path: Path
) -> None:
    template = tmp_path / "chat_template.jinja"
    template.write_text("{{ messages[0].content }}")
    specs = {
        "qwen3": TokenizerSpec.model_validate({"kind": "builtin", "name": "qwen3"}),
        "mine": TokenizerSpec.model_validate({"kind": "hf", "path": str(model_folder)}),
        "gpt-oss": TokenizerSpec.model_validate(
            {"kind": "tiktoken", "encoding": "o200k_harmony", "template_file": str(template)}
        ),
    }

    served = cli.served_models(specs)

    assert {alias: model.source for alias, model in served.items()} == {
        "qwen3": "qwen3",
        "mine": str(model_folder),
        "gpt-oss": "o200k_harmony",
    }
    # The same files and options count the same wherever they are loaded from.
    assert served["mine"].counter.tokenizer_version == served["qwen3"].counter.tokenizer_version
    assert served["qwen3"].counter is qwen3


def test_a_tokenizer_that_cannot_be_loaded_is_named(tmp_path: Path) -> None:
    specs = {"broken": TokenizerSpec.model_validate({"kind": "hf", "path": str(tmp_path / "missing")})}

    with pytest.raises(TokenizerLoadError, match="tokenizer 'broken': cannot read"):
        cli.served_models(specs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.skipif(
    "tokenizer" not in cachegate_cli._parser().format_help(),
    reason="the tokenizer commands are not wired into the cachegate command yet",
)
def test_the_command_serves_the_configured_tokenizers_until_interrupted(tmp_path: Path, model_folder: Path) -> None:
    config = tmp_path / "cachegate.yaml"
    config.write_text(
        json.dumps(
            {
                "tokenizers": {
                    "qwen3": {"kind": "builtin", "name": "qwen3"},
                    "mine": {"kind": "hf", "path": str(model_folder)},
                }
            }
        )
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHEGATE_")}
    command = [sys.executable, "-m", "cachegate", "-c", str(config), "tokenizer", "serve", "--port", str(port)]
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        assert process.stdout is not None
        try:
            output = ""
            deadline = time.monotonic() + 60
            while f"tokenizer service listening on http://127.0.0.1:{port}" not in output:
                line = process.stdout.readline()
                if not line:
                    pytest.fail(f"cachegate tokenizer serve exited early:\n{output}")
                output += line
                assert time.monotonic() < deadline, output
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=10) as response:
                models = json.loads(response.read())["models"]
        finally:
            process.send_signal(signal.SIGINT)
            status = process.wait(30)

    assert [(model["alias"], model["hf_repo"]) for model in models] == [("mine", str(model_folder)), ("qwen3", "qwen3")]
    assert status == 130  # a clean shutdown on Ctrl-C, with the conventional status

"""An operator's gateway: ``cachegate serve -c`` with three models on three kinds of tokenizer.

Qwen3 (the shipped tokenizer), a local Hugging Face folder (Qwen2.5's template over the same
vocabulary) and gpt-oss (tiktoken's o200k_harmony and the published gpt-oss template), each
behind the built-in fake upstream, each driven by the official openai SDK: a marked prompt
writes the cache, and the same prompt reads exactly what was written.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from cachegate.tokens.shipped import qwen3_files

from .demo_server import free_port
from .test_serve_demo import MESSAGES

TEMPLATES = Path(__file__).resolve().parents[1] / "tokens_parity" / "templates"
MODELS = ("qwen3", "qwen2.5", "gpt-oss")


def cachegate(*args: str) -> list[str]:
    return [sys.executable, "-m", "cachegate", *args]


def wait_for(process: subprocess.Popen[str], text: str) -> None:
    assert process.stdout is not None
    output = ""
    while text not in output:
        line = process.stdout.readline()
        if not line:
            pytest.fail(f"{process.args} exited early:\n{output}")
        output += line


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    work = tmp_path_factory.mktemp("operator")
    folder = work / "qwen2.5"
    folder.mkdir()
    (folder / "tokenizer.json").write_bytes(qwen3_files().tokenizer_json)
    (folder / "chat_template.jinja").write_text((TEMPLATES / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text())
    upstream_port, gateway_port = free_port(), free_port()
    config = work / "cachegate.yaml"
    config.write_text(
        f"""
data_dir: {work / "data"}
tokenizers:
  qwen3: {{kind: builtin, name: qwen3}}
  qwen25: {{kind: hf, path: {folder}}}
  gpt_oss: {{kind: tiktoken, encoding: o200k_harmony, template_file: {TEMPLATES / "openai-gpt-oss-120b.jinja"}}}
endpoints:
  - {{name: fake, base_url: "http://127.0.0.1:{upstream_port}/v1"}}
models:
  - {{alias: qwen3, endpoint: fake, upstream_model: m, tokenizer: qwen3, cache: {{min_prefix_tokens: 1024}}}}
  - {{alias: qwen2.5, endpoint: fake, upstream_model: m, tokenizer: qwen25, cache: {{min_prefix_tokens: 1024}}}}
  - {{alias: gpt-oss, endpoint: fake, upstream_model: m, tokenizer: gpt_oss, cache: {{min_prefix_tokens: 1024}}}}
"""
    )
    subprocess.run(cachegate("-c", str(config), "principal", "create", "acme"), check=True, capture_output=True)
    created = subprocess.run(
        cachegate("-c", str(config), "key", "create", "acme"), check=True, capture_output=True, text=True
    ).stdout
    secret = re.search(r"secret\s+(\S+)", created)
    assert secret, created
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    upstream = subprocess.Popen(cachegate("-c", str(config), "fake-upstream", "--port", str(upstream_port)), **pipes)
    server = subprocess.Popen(cachegate("-c", str(config), "serve", "--port", str(gateway_port)), **pipes)
    try:
        wait_for(upstream, "fake upstream")
        wait_for(server, "Application startup complete")
        yield f"http://127.0.0.1:{gateway_port}/v1", secret.group(1)
    finally:
        for process in (server, upstream):
            process.send_signal(signal.SIGINT)
        for process in (server, upstream):
            process.wait(30)


@pytest.mark.parametrize("model", MODELS)
def test_each_model_writes_then_reads_with_its_own_tokenizer(gateway: tuple[str, str], model: str) -> None:
    base_url, key = gateway
    client = OpenAI(base_url=base_url, api_key=key, max_retries=0)

    first, second = (client.chat.completions.create(model=model, messages=MESSAGES).usage for _ in range(2))

    assert first is not None and second is not None
    written = (first.model_extra or {})["cache_creation_input_tokens"]
    assert written > 1024
    assert (second.model_extra or {})["cache_read_input_tokens"] == written


def test_what_one_model_wrote_is_never_read_by_another(gateway: tuple[str, str]) -> None:
    # Each model has its own scope (alias and tokenizer version): the same prompt is new to each.
    base_url, key = gateway
    client = OpenAI(base_url=base_url, api_key=key, max_retries=0)
    system = {**MESSAGES[0], "content": [{**MESSAGES[0]["content"][0], "text": "Scope check, model by model. " * 300}]}

    for model in MODELS:
        usage = client.chat.completions.create(model=model, messages=[system, MESSAGES[1]]).usage
        assert usage is not None
        extra = usage.model_extra or {}
        assert (extra["cache_read_input_tokens"], extra["cache_creation_input_tokens"] > 1024) == (0, True), model

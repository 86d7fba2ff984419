"""Benchmark of token counting (issue #3): cold speed, the seen-prefix tail, and memory.

For agent conversations of about 200k tokens in several shapes (few long messages to many
short ones), it reports:

- cold: counting a never-seen conversation (render, marks, tokenization of every piece) against
  the raw tokenizer library encoding the same rendered text in one call, and the ratio;
- tail: the conversation grown by one tool turn with a breakpoint on its last message, the
  prefix up to the previous breakpoint seen before: the time of ``CacheClassifier.classify``
  (SQLite index lookup, counting of the new tail, the check of the hit), median and p90 over
  ``--trials`` turns, with the parse of the request (markers, blocks, hashes) beside it;
- hit: the same conversation again (every breakpoint cached): classification is the lookup;
- the other published templates (Qwen2.5, Llama 3.1, DeepSeek-V3.1, Mistral-Nemo, Qwen3-Coder)
  on a conversation grown by one tool turn: the count's time and how it was taken (resumed from
  the last count, laid out, or rendered by jinja with marks).

With ``--memory`` it also starts ``cachegate serve`` with three models on three tokenizer
configurations, sends each a 200k-token conversation and reports the gateway's resident and
peak memory (``VmRSS``/``VmHWM``).

    make bench-tokens        # or: .venv/bin/python bench/tokens.py [--trials 20] [--memory]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tiktoken
from tokenizers import AddedToken, Tokenizer

from cachegate.core.blocks import parse_prompt
from cachegate.core.markers import TtlPolicy
from cachegate.core.types import CacheScope, CacheTariff
from cachegate.gateway.classifier import CacheClassifier
from cachegate.index.factory import open_index
from cachegate.tokens.base import TokenCounter, TokenCountError
from cachegate.tokens.counter import ChatTokenCounter
from cachegate.tokens.hf import HfPieces
from cachegate.tokens.memo import MemoizedCounter
from cachegate.tokens.registry import TokenizerSpec, load_counter, qwen3_counter, tiktoken_counter
from cachegate.tokens.shipped import qwen3_files
from cachegate.tokens.tiktoken_pieces import encoding_spec, named_encoding

POLICY = TtlPolicy.default_policy()
TARIFF = CacheTariff(min_prefix_tokens=1024)
MARK = {"type": "ephemeral"}
TARGET_TOKENS = 200_000
TOKENS_PER_LINE = 14  # of the generated code lines, measured with the Qwen3 tokenizer


def code_lines(rng: random.Random, lines: int) -> str:
    names = ("parse", "render", "encode", "lookup", "commit", "refresh", "splice", "frame")
    return "".join(
        f"def {rng.choice(names)}_{rng.randrange(10_000)}(value, limit={rng.randrange(100)}):\n"
        f"    return {rng.choice(names)}(value) + {rng.randrange(1000)}\n"
        for _ in range(max(1, lines // 2))
    )


def agent_conversation(messages: int, seed: int = 7) -> dict[str, Any]:
    """A coding agent's request: system prompt (marked 1h), tools, one query, then tool turns."""
    rng = random.Random(seed)
    turns = max(1, (messages - 2) // 2)
    lines_per_result = max(2, (TARGET_TOKENS - 4_000) // turns // TOKENS_PER_LINE)
    system = "You are a careful coding agent. Follow the repository's conventions.\n" + code_lines(rng, 200)
    tools = [
        {
            "type": "function",
            "function": {
                "name": name,
                "description": f"{name.title()} a file of the repository.",
                "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
            },
        }
        for name in ("read", "write", "search", "run", "list")
    ]
    body: dict[str, Any] = {
        "model": "bench",
        "tools": tools,
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": system, "cache_control": {**MARK, "ttl": "1h"}}]},
            {"role": "user", "content": "The parser drops the last line of every file; find and fix it."},
        ],
    }
    for turn in range(turns):
        add_tool_turn(body, rng, turn, lines_per_result)
    return body


def add_tool_turn(body: dict[str, Any], rng: random.Random, turn: int, lines: int) -> None:
    """Append an assistant tool call and its result; the breakpoint moves to the new result."""
    for message in body["messages"][2:]:
        if isinstance(message["content"], list):
            message["content"] = message["content"][0]["text"]
    call_id = f"c{turn:08d}"  # nine letters and digits, as Mistral's template demands
    body["messages"].append(
        {
            "role": "assistant",
            "content": f"Reading file {turn}.",
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": "read", "arguments": json.dumps({"path": f"src/module_{turn}.py"})},
                }
            ],
        }
    )
    result = {"type": "text", "text": code_lines(rng, lines), "cache_control": MARK}
    body["messages"].append({"role": "tool", "tool_call_id": call_id, "content": [result]})


def timed(action: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    value = action()
    return value, time.perf_counter() - started


async def atimed(action: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    value = await action()
    return value, time.perf_counter() - started


def fresh_counter(spec: TokenizerSpec) -> ChatTokenCounter:
    """A counter with its own, empty piece memory (``load_counter`` may hand out a shared one)."""
    choice = spec.root
    if choice.kind == "builtin":
        return qwen3_counter(choice.count_options())
    if choice.kind == "tiktoken":
        return tiktoken_counter(
            named_encoding(choice.encoding), choice.template_file.read_text(), choice.count_options()
        )
    return load_counter(spec)


def cold(spec: TokenizerSpec, body: dict[str, Any], raw_encode: Callable[[str], int], runs: int = 3) -> str:
    """Counting a never-seen conversation (a fresh counter each run) against one raw encode of its rendering."""
    prompt = parse_prompt(body, POLICY)
    blocks = [breakpoint_.block for breakpoint_ in prompt.breakpoints]
    text = fresh_counter(spec).render(body, prompt, []).text
    count_times, raw_times = [], []
    for _ in range(runs):
        counter = fresh_counter(spec)
        counts, seconds = timed(lambda counter=counter: counter.count_blocking(body, prompt, blocks))
        raw_tokens, raw_seconds = timed(lambda: raw_encode(text))
        assert raw_tokens == counts.total, (raw_tokens, counts.total)
        count_times.append(seconds)
        raw_times.append(raw_seconds)
    count_ms, raw_ms = median_ms(count_times), median_ms(raw_times)
    return (
        f"{counts.total:>8,} tokens  count p50 {count_ms:6.1f} ms  raw encode p50 {raw_ms:6.1f} ms"
        f"  ratio {count_ms / raw_ms:5.2f}"
    )


async def tail(
    spec: TokenizerSpec, messages: int, tail_lines: int, trials: int, work: Path, raw_encode: Callable[[str], int]
) -> str:
    """Classification of the seen conversation grown by one new tool turn, ``trials`` times (a new turn each)."""
    counter: TokenCounter = MemoizedCounter(fresh_counter(spec))
    index = await open_index(f"sqlite:///{work / f'index-{messages}-{tail_lines}.db'}")
    classifier = CacheClassifier(index, commit_deadline=5.0)
    scope = CacheScope("prn_bench", "bench", counter.tokenizer_version)
    rng = random.Random(messages)
    seen = agent_conversation(messages)
    try:
        first = await classifier.classify(scope, parse_prompt(seen, POLICY), seen, TARIFF, counter, time.time())
        await classifier.commit(first.writes)
        parse_times, tail_times, raw_times, created = [], [], [], []
        for turn in range(trials):
            body = copy.deepcopy(seen)
            add_tool_turn(body, rng, 10_000 + turn, tail_lines)
            prompt, parse_seconds = timed(lambda body=body: parse_prompt(body, POLICY))
            result, seconds = await atimed(
                lambda body=body, prompt=prompt: classifier.classify(scope, prompt, body, TARIFF, counter, time.time())
            )
            assert result.stats.read == first.writes[-1].cumulative_tokens and not result.degraded, result
            _, raw_seconds = timed(lambda body=body: raw_encode(body["messages"][-1]["content"][0]["text"]))
            parse_times.append(parse_seconds)
            tail_times.append(seconds)
            raw_times.append(raw_seconds)
            created.append(result.stats.creation)
        prompt = parse_prompt(seen, POLICY)
        hit_times = []
        for _ in range(trials):
            result, seconds = await atimed(
                lambda: classifier.classify(scope, prompt, seen, TARIFF, counter, time.time())
            )
            assert result.stats.creation == 0 and result.stats.read == first.writes[-1].cumulative_tokens, result
            hit_times.append(seconds)
    finally:
        await index.aclose()
        await counter.aclose()
    return (
        f"{first.writes[-1].cumulative_tokens:>8,} seen + {statistics.median(created):>5,.0f} new tokens:"
        f"  classify p50 {median_ms(tail_times):6.1f} ms  p90 {p90_ms(tail_times):6.1f} ms"
        f" (raw encode of the new text {median_ms(raw_times):4.1f} ms)"
        f" | all cached: classify p50 {median_ms(hit_times):4.2f} ms | parse p50 {median_ms(parse_times):4.2f} ms"
    )


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def p90_ms(samples: list[float]) -> float:
    return sorted(samples)[int(0.9 * (len(samples) - 1))] * 1e3


TEMPLATES = Path(__file__).resolve().parents[1] / "tests/tokens_parity/templates"  # the published templates
GPT_OSS_TEMPLATE = TEMPLATES / "openai-gpt-oss-120b.jinja"
QWEN25_TEMPLATE = TEMPLATES / "Qwen-Qwen2.5-7B-Instruct.jinja"


def raw_tokenizers_encoder(spec: TokenizerSpec) -> Callable[[str], int]:
    """The tokenizers library itself, encoding one text in one call."""
    tokenizer = Tokenizer.from_buffer(qwen3_files().tokenizer_json)
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False))


def raw_tiktoken_encoder(spec: TokenizerSpec) -> Callable[[str], int]:
    """tiktoken itself, encoding one text in one call."""
    definition = encoding_spec("o200k_harmony")
    encoding = tiktoken.Encoding(
        definition.name,
        pat_str=definition.pat_str,
        mergeable_ranks=dict(definition.ranks.ranks),
        special_tokens=dict(definition.special_tokens),
    )
    return lambda text: len(encoding.encode(text, allowed_special="all"))


TOKENIZERS: dict[str, tuple[TokenizerSpec, Callable[[TokenizerSpec], Callable[[str], int]]]] = {
    "qwen3 (tokenizers, Qwen3 template)": (
        TokenizerSpec.model_validate({"kind": "builtin", "name": "qwen3"}),
        raw_tokenizers_encoder,
    ),
    "gpt-oss (tiktoken o200k_harmony, gpt-oss template)": (
        TokenizerSpec.model_validate(
            {"kind": "tiktoken", "encoding": "o200k_harmony", "template_file": str(GPT_OSS_TEMPLATE)}
        ),
        raw_tiktoken_encoder,
    ),
}


# The other published templates, each with Qwen3's vocabulary and its family's special tokens
# and BOS: the rendering is the template's and it is cut into pieces where the family's own
# tokenizer cuts it, so the time is that of the template's path through cachegate.
FAMILIES: dict[str, tuple[str, list[str]]] = {
    "Qwen2.5": ("Qwen-Qwen2.5-7B-Instruct", []),
    "Llama 3.1": (
        "meta-llama-Llama-3.1-8B-Instruct",
        ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<|python_tag|>"],
    ),
    "DeepSeek-V3.1": (
        "deepseek-ai-DeepSeek-V3.1",
        [
            "<｜begin▁of▁sentence｜>",
            "<｜end▁of▁sentence｜>",
            "<｜User｜>",
            "<｜Assistant｜>",
            "<｜tool▁calls▁begin｜>",
            "<｜tool▁calls▁end｜>",
            "<｜tool▁call▁begin｜>",
            "<｜tool▁call▁end｜>",
            "<｜tool▁sep｜>",
            "<｜tool▁output▁begin｜>",
            "<｜tool▁output▁end｜>",
        ],
    ),
    "Mistral-Nemo": (
        "mistralai-Mistral-Nemo-Instruct-2407",
        [
            "<s>",
            "</s>",
            "[INST]",
            "[/INST]",
            "[TOOL_CALLS]",
            "[AVAILABLE_TOOLS]",
            "[/AVAILABLE_TOOLS]",
            "[TOOL_RESULTS]",
            "[/TOOL_RESULTS]",
        ],
    ),
    "Qwen3-Coder": ("Qwen3-Coder", []),
}


def families(trials: int) -> None:
    """Each other published template on a conversation grown by one tool turn: count p50, and how."""
    print("== other templates (Qwen3's vocabulary, the family's special tokens): one new tool turn counted")
    for family, (template, specials) in FAMILIES.items():
        tokenizer = Tokenizer.from_buffer(qwen3_files().tokenizer_json)
        tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in specials])
        special_tokens = {**qwen3_files().special_tokens, "bos_token": specials[0] if specials else None}
        source = (TEMPLATES / f"{template}.jinja").read_text()
        counter = ChatTokenCounter(HfPieces(tokenizer, family.encode()), source, special_tokens)
        try:
            cells = [grown_count(counter, messages, trials) for messages in (20, 100, 400)]
        except TokenCountError as exc:
            cells = [f"refused: {exc}"]
        print(f"{family:<14} " + " | ".join(cells))


def grown_count(counter: ChatTokenCounter, messages: int, trials: int) -> str:
    rng = random.Random(messages)
    body = agent_conversation(messages)
    prompt = parse_prompt(body, POLICY)
    counter.count_blocking(body, prompt, [breakpoint_.block for breakpoint_ in prompt.breakpoints])
    times, methods = [], set()
    for turn in range(trials):
        body = copy.deepcopy(body)
        add_tool_turn(body, rng, 10_000 + turn, 20)
        prompt = parse_prompt(body, POLICY)
        blocks = [breakpoint_.block for breakpoint_ in prompt.breakpoints]
        counts, seconds = timed(
            lambda body=body, prompt=prompt, blocks=blocks: counter.count_blocking(body, prompt, blocks)
        )
        times.append(seconds)
        methods.add(counts.method)
    return f"{messages:>3} messages {median_ms(times):5.1f} ms ({'/'.join(sorted(methods))})"


async def run(trials: int) -> None:
    shapes = (20, 50, 100, 200, 400)
    with tempfile.TemporaryDirectory(prefix="cachegate-tokbench-") as work:
        for name, (spec, raw) in TOKENIZERS.items():
            encode = raw(spec)
            print(f"== {name}")
            for messages in shapes:
                print(f"cold  {messages:>4} messages: {cold(spec, agent_conversation(messages), encode)}")
            for tail_lines in (20, 200):
                for messages in shapes:
                    line = await tail(spec, messages, tail_lines, trials, Path(work), encode)
                    print(f"grown {messages:>4} messages: {line}")


def memory() -> None:
    """Start ``cachegate serve`` with three models, count a 200k-token conversation on each, read its memory."""
    import bench as gateway_bench  # the gateway benchmark's process helpers (this folder is on sys.path)

    cachegate = str(Path(sys.executable).with_name("cachegate"))
    with tempfile.TemporaryDirectory(prefix="cachegate-membench-") as name:
        work = Path(name)
        folder = work / "qwen2.5"
        folder.mkdir()
        (folder / "tokenizer.json").write_bytes(qwen3_files().tokenizer_json)
        (folder / "chat_template.jinja").write_text(QWEN25_TEMPLATE.read_text())
        upstream_port, gateway_port = gateway_bench.free_port(), gateway_bench.free_port()
        models = {"qwen3": "qwen3", "qwen2.5": "qwen25", "gpt-oss": "gpt_oss"}
        config = work / "config.yaml"
        config.write_text(
            f"""
data_dir: {work}
tokenizers:
  qwen3: {{kind: builtin, name: qwen3}}
  qwen25: {{kind: hf, path: {folder}}}
  gpt_oss: {{kind: tiktoken, encoding: o200k_harmony, template_file: {GPT_OSS_TEMPLATE}}}
endpoints:
  - {{name: fake, base_url: "http://127.0.0.1:{upstream_port}/v1"}}
models:
"""
            + "".join(
                f"  - {{alias: {alias}, endpoint: fake, upstream_model: {alias}, tokenizer: {tokenizer},"
                f' input_price: "0.000001", output_price: "0.000002", cache: {{min_prefix_tokens: 1024}}}}\n'
                for alias, tokenizer in models.items()
            )
        )
        key = asyncio.run(gateway_bench.create_key(f"sqlite:///{work / 'control.db'}"))
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        upstream = subprocess.Popen(
            [cachegate, "-c", str(config), "fake-upstream", "--port", str(upstream_port)], **quiet
        )
        gateway = subprocess.Popen([cachegate, "-c", str(config), "serve", "--port", str(gateway_port)], **quiet)
        try:
            gateway_bench.wait_ready(f"http://127.0.0.1:{upstream_port}/v1/models", upstream)
            gateway_bench.wait_ready(f"http://127.0.0.1:{gateway_port}/healthz", gateway)
            print(f"gateway started, three models loaded: {memory_of(gateway.pid)}")
            url = f"http://127.0.0.1:{gateway_port}/v1/chat/completions"
            for alias in models:
                for messages in (20, 400):
                    body = agent_conversation(messages)
                    body["model"] = alias
                    usage = gateway_bench.post(url, json.dumps(body).encode(), key)["usage"]
                    written = usage.get("cache_creation_input_tokens", 0)
                    print(f"  {alias:<8} {messages:>3} messages: wrote {written:>7,} tokens; {memory_of(gateway.pid)}")
        finally:
            for process in (gateway, upstream):
                process.send_signal(signal.SIGINT)
            for process in (gateway, upstream):
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()


def memory_of(pid: int) -> str:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return f"resident {kib_to_mib(status['VmRSS'])} MiB, peak {kib_to_mib(status['VmHWM'])} MiB"


def kib_to_mib(field: str) -> int:
    return int(field.split()[0]) // 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20, help="tail turns per shape (default 20)")
    parser.add_argument("--memory", action="store_true", help="also measure the gateway's memory with three models")
    args = parser.parse_args()
    asyncio.run(run(args.trials))
    families(args.trials)
    if args.memory:
        memory()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

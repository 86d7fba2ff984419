"""The cachegate command: serve the gateway, run the fake upstream, manage the control store."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Sequence

import uvloop

from cachegate import admin, serving
from cachegate.bootstrap import close_counters, create_demo_key, open_counters, open_gateway, prepare
from cachegate.config import CONFIG_PATH_ENV, Config, ConfigError, load_config
from cachegate.fake_upstream import start_fake_upstream
from cachegate.store.base import StoreError
from cachegate.store.factory import open_store
from cachegate.tokenizer_service import cli as tokenizer_cli
from cachegate.tokens.base import TokenCounter, TokenizerLoadError
from cachegate.workers import Supervisor, inherited_listener

log = logging.getLogger("cachegate")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run = getattr(args, "run", None)  # every command sets it: (arguments, configuration) -> exit status
    if run is None:
        parser.print_help()
        return 2
    try:
        config = load_config(args.config or os.environ.get(CONFIG_PATH_ENV))
    except ConfigError as exc:
        print(f"cachegate: {exc}", file=sys.stderr)
        return 2
    try:
        return int(uvloop.run(run(args, config)))
    except StoreError as exc:
        print(f"cachegate: control store: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:  # a URL only its adapter can judge
        print(f"cachegate: {exc}", file=sys.stderr)
        return 2
    except (TokenizerLoadError, serving.ListenError) as exc:
        print(f"cachegate: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cachegate", description=__doc__)
    parser.add_argument(
        "--config", "-c", help=f"YAML config file (default: ${CONFIG_PATH_ENV}, else the embedded demo)"
    )
    commands = parser.add_subparsers(title="commands")

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--host", help="listen address (overrides the config)")
    serve.add_argument("--port", type=int, help="listen port (overrides the config)")
    serve.add_argument(
        "--workers",
        type=_worker_count,
        help="gateway processes sharing the listening socket, one per core (overrides the config; default 1)",
    )
    serve.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)  # a worker's inherited socket (workers.py)
    serve.set_defaults(run=_serve)

    fake = commands.add_parser("fake-upstream", help="run the built-in fake OpenAI-compatible upstream")
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--port", type=int, default=8081)
    fake.add_argument("--tokenizer", default="qwen3", help="token counter (from the config) used for prompt_tokens")
    fake.add_argument(
        "--kv-cache-blocks",
        type=int,
        default=0,
        metavar="N",
        help="simulate a prefix KV cache of N 16-token blocks and report its hits as cached_tokens (0: off)",
    )
    fake.set_defaults(run=_fake_upstream)

    migrate = commands.add_parser("migrate", help="create or update the control-store schema")
    migrate.set_defaults(run=_migrate)

    admin.register(commands)
    tokenizer_cli.register(commands)
    return parser


async def _serve(args: argparse.Namespace, config: Config) -> int:
    if args.listen_fd is not None:
        return await _serve_worker(args.listen_fd, config)
    host = args.host or config.listen.host
    port = args.port if args.port is not None else config.listen.port
    workers = args.workers or config.server.workers
    async with contextlib.AsyncExitStack() as opened:  # whatever fails at start, what was opened is closed
        listener = serving.listen(host, port, "listen (--host/--port)")  # first: a port in use opens nothing
        opened.callback(listener.close)
        if workers > 1:  # this process supervises; each worker opens its own ports
            if config.demo.enabled:
                await _start_demo_upstream(config, opened)
                await _print_demo_access(config, f"http://{host}:{port}")
            worker_args = ["--config", args.config] if args.config else []
            return await Supervisor(listener, workers, worker_args, config.server).run()
        counters = await open_counters(config)
        opened.push_async_callback(close_counters, counters)  # idempotent: the gateway's shutdown closes them too
        if config.demo.enabled:
            await _start_demo_upstream(config, opened, counters)
        gateway = await open_gateway(config, counters)
        if config.demo.enabled:
            access = await create_demo_key(gateway.store, f"http://{host}:{port}")
            print(_demo_banner(access.base_url, access.model, access.secret), flush=True)
        await serving.serve(gateway, listener, "cachegate", config.server)
    return 0


async def _serve_worker(fd: int, config: Config) -> int:
    """One worker of ``serve --workers N`` (``workers.py``): the gateway on the supervisor's socket. The
    supervisor runs the demo upstream and prints the demo key; a worker serves."""
    async with contextlib.AsyncExitStack() as opened:
        listener = inherited_listener(fd)
        opened.callback(listener.close)
        gateway = await open_gateway(config)
        await serving.serve(gateway, listener, f"cachegate worker {os.getpid()}", config.server)
    return 0


async def _print_demo_access(config: Config, gateway_url: str) -> None:
    """The demo banner, printed once by the supervisor: the store is prepared here first, so its key exists
    before any worker serves."""
    store = await open_store(config.store_url)
    try:
        await prepare(store, config)
        access = await create_demo_key(store, gateway_url)
    finally:
        await store.aclose()
    print(_demo_banner(access.base_url, access.model, access.secret), flush=True)


def _worker_count(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of processes, at least 1, not {text!r}")
    return int(text)


async def _start_demo_upstream(
    config: Config, opened: contextlib.AsyncExitStack, counters: dict[str, TokenCounter] | None = None
) -> None:
    """The demo's fake upstream, stopped (and its counters closed, if opened here) when ``opened`` closes."""
    if counters is None:
        counters = await open_counters(config)
        opened.push_async_callback(close_counters, counters)
    try:
        runner, _ = await start_fake_upstream(counters["qwen3"], "127.0.0.1", config.demo.port)
    except OSError as exc:
        raise serving.ListenError.of("demo.port", "127.0.0.1", config.demo.port, exc) from exc
    opened.push_async_callback(runner.cleanup)


async def _fake_upstream(args: argparse.Namespace, config: Config) -> int:
    counters = await open_counters(config)
    try:
        if args.tokenizer not in counters:
            print(f"cachegate: unknown tokenizer {args.tokenizer!r}", file=sys.stderr)
            return 2
        try:
            runner, port = await start_fake_upstream(
                counters[args.tokenizer], args.host, args.port, kv_cache_blocks=args.kv_cache_blocks
            )
        except OSError as exc:
            raise serving.ListenError.of("--host/--port", args.host, args.port, exc) from exc
        print(f"fake upstream listening on http://{args.host}:{port}/v1", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()
    finally:
        await close_counters(counters)
    return 0


async def _migrate(args: argparse.Namespace, config: Config) -> int:
    store = await open_store(config.store_url)
    try:
        await store.migrate()
    finally:
        await store.aclose()
    print("control store is up to date")
    return 0


def _demo_banner(base_url: str, model: str, secret: str) -> str:
    marker = {"type": "ephemeral", "ttl": "1h"}
    system = {"type": "text", "text": "<a long, stable system prompt>", "cache_control": marker}
    messages = [{"role": "system", "content": [system]}, {"role": "user", "content": "Hello"}]
    payload = json.dumps({"model": model, "messages": messages})
    return f"""
cachegate is starting on the embedded default (SQLite, Qwen3 token counts, the fake upstream).

  base URL : {base_url}
  model    : {model}
  API key  : {secret}      (shown once; a new one is made at every demo start)

  curl {base_url}/chat/completions \\
    -H "Authorization: Bearer {secret}" -H "Content-Type: application/json" \\
    -d '{payload}'

  python: OpenAI(base_url="{base_url}", api_key="{secret}").chat.completions.create(model="{model}", messages=...)
  Prefixes under 1024 tokens (the demo tariff's floor) are not cached.
"""


if __name__ == "__main__":
    raise SystemExit(main())

"""``cachegate tokenizer serve``: the tokenizer service (SPEC §5) over the configuration's tokenizers.

Every entry of the configuration's ``tokenizers:`` section is served under its name, so a
gateway configured with a remote tokenizer names the same alias the service's own configuration
gives it. The service answers only for the same cachegate version as its gateways
(``cachegate.tokens.remote``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping

from cachegate import serving
from cachegate.config import Config
from cachegate.tokenizer_service.app import ServedModel, TokenizerService
from cachegate.tokens.base import TokenizerLoadError
from cachegate.tokens.registry import RemoteTokenizerSpec, TokenizerSpec, load_counter

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8082  # next to the gateway's 8080 and the fake upstream's 8081


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``tokenizer`` command group (``tokenizer serve``)."""
    group = subparsers.add_parser("tokenizer", help="the tokenizer service that gateways may count with")
    commands = group.add_subparsers(title="tokenizer commands")
    serve = commands.add_parser("serve", help="serve every tokenizer of the config over HTTP")
    serve.add_argument("--host", default=DEFAULT_HOST, help="listen address (default: %(default)s)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help="listen port (default: %(default)s)")
    serve.set_defaults(run=run)


async def run(args: argparse.Namespace, config: Config) -> int:
    """Serve until interrupted; 1 when a tokenizer cannot be loaded."""
    try:
        models = served_models(config.tokenizers)
    except TokenizerLoadError as exc:
        print(f"cachegate: {exc}", file=sys.stderr)
        return 1
    try:
        listener = serving.listen(args.host, args.port, "--host/--port")
        service = TokenizerService(models, config.body_limit_bytes)
        with listener:
            await serving.serve(service, listener, "tokenizer service")
    finally:
        for model in models.values():
            await model.counter.aclose()
    return 0


def served_models(specs: Mapping[str, TokenizerSpec]) -> dict[str, ServedModel]:
    """Load each configured local tokenizer, unmemoized: the gateways in front memoize their own counts.

    Remote tokenizers in the same configuration are another service's to serve, and are left out.
    Raises ``TokenizerLoadError`` naming the tokenizer that failed.
    """
    models: dict[str, ServedModel] = {}
    for alias, spec in specs.items():
        choice = spec.root
        if isinstance(choice, RemoteTokenizerSpec):
            continue
        try:
            counter = load_counter(spec)
        except TokenizerLoadError as exc:
            raise TokenizerLoadError(f"tokenizer {alias!r}: {exc}") from exc
        models[alias] = ServedModel(counter, choice.source)
    return models

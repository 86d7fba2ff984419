"""The ``cachegate`` admin commands: principals, API keys, endpoints, models, tariffs, usage.

``register`` adds them to the main parser. Each sets ``run``, as every ``cachegate`` command
does: an async callable of the arguments and the configuration whose result is the exit code;
for an admin command it opens the control store (migrated), runs the command with it and closes
it. A command given names the configuration defines (a tokenizer, a TTL) also sets ``check``,
called with the configuration first: a name the gateway could not serve is refused (exit 2)
before the store is touched, instead of every request to it failing later. A store error (a
name that does not exist or exists already, an out-of-order tariff, the store unreachable)
prints one line on stderr and exits 1; malformed arguments, such as a price that is not a
plain non-negative decimal, are argparse's business and exit 2.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from urllib.parse import urlsplit

from cachegate.config import Config
from cachegate.core.types import CacheTariff, TtlTier
from cachegate.store.base import ControlStore, Endpoint, Model, NotFound, StoreError, TariffVersion
from cachegate.store.factory import open_store
from cachegate.store.values import decimal_text, parse_decimal, utcnow

AdminCommand = Callable[[argparse.Namespace, ControlStore], Awaitable[int]]
ConfigCheck = Callable[[argparse.Namespace, Config], str | None]
"""Returns why the arguments do not fit the configuration, or None."""

_DEFAULT_TARIFF = CacheTariff()
_DEFAULT_TOKENIZER = "qwen3"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``principal``, ``key``, ``endpoint``, ``model``, ``tariff`` and ``usage`` commands."""
    principal = _group(subparsers, "principal", "tenants: whom keys, cache scopes and bills belong to")
    create = _command(principal, "create", "create a principal", _principal_create)
    create.add_argument("name")
    _command(principal, "list", "list the principals", _principal_list)

    key = _group(subparsers, "key", "API keys")
    create = _command(key, "create", "create an API key; its secret is printed once", _key_create)
    create.add_argument("principal", help="principal name or id")
    create.add_argument("--admin", action="store_true", help="the key may use admin operations")
    revoke = _command(key, "revoke", "revoke an API key", _key_revoke)
    revoke.add_argument("key_id")
    listing = _command(key, "list", "list API keys (never their secrets)", _key_list)
    listing.add_argument("--principal", help="only this principal's keys (name or id)")

    endpoint = _group(subparsers, "endpoint", "upstream servers")
    add = _command(endpoint, "add", "add or update an endpoint", _endpoint_add)
    add.add_argument("name")
    add.add_argument("base_url", type=_http_url, help="e.g. http://127.0.0.1:8000/v1")
    add.add_argument("--api-key", help="sent upstream instead of the client's key")
    _command(endpoint, "list", "list the endpoints", _endpoint_list)

    model = _group(subparsers, "model", "model aliases clients can ask for")
    add = _command(model, "add", "add or update a model", _model_add)
    add.add_argument("alias")
    add.add_argument(
        "--endpoint", required=True, action="append", help="repeat for several replicas, spread by prefix affinity"
    )
    add.add_argument("--upstream-model", required=True, help="the model name the upstream is sent")
    add.add_argument("--tokenizer", default=_DEFAULT_TOKENIZER, help="token counter name (default: %(default)s)")
    for option, meaning in (("--input-price", "per prompt token"), ("--output-price", "per completion token")):
        add.add_argument(option, type=_price, default="0", metavar="D", help=f"{meaning} (default: %(default)s)")
    add.add_argument(
        "--automatic-caching",
        type=TtlTier,
        choices=list(TtlTier),
        metavar="TTL",
        help="cache requests that carry no marker with this TTL (5m, 1h, 24h), as OpenAI caches automatically",
    )
    add.set_defaults(check=_model_add_fits)
    _command(model, "list", "list the models", _model_list)

    tariff = _group(subparsers, "tariff", "cache tariffs: a tariff in force enables caching for a model")
    set_ = _command(tariff, "set", "open a new tariff version for a model from now", _tariff_set)
    set_.add_argument("model")
    for option, default, meaning in (
        ("--write-5m", _DEFAULT_TARIFF.write_multiplier_5m, "5-minute cache writes"),
        ("--write-1h", _DEFAULT_TARIFF.write_multiplier_1h, "1-hour cache writes"),
        ("--write-24h", _DEFAULT_TARIFF.write_multiplier_24h, "24-hour cache writes"),
        ("--read", _DEFAULT_TARIFF.read_multiplier, "cache reads"),
    ):
        set_.add_argument(
            option,
            type=_price,
            default=default,
            metavar="D",
            help=f"input price multiplier of {meaning} (default: %(default)s)",
        )
    set_.add_argument(
        "--min-prefix-tokens",
        type=_token_count,
        default=_DEFAULT_TARIFF.min_prefix_tokens,
        metavar="N",
        help="shorter prompts are not cached (default: %(default)s)",
    )
    disable = _command(tariff, "disable", "close the tariff in force: caching stops for the model", _tariff_disable)
    disable.add_argument("model")
    listing = _command(tariff, "list", "list tariff versions, oldest first", _tariff_list)
    listing.add_argument("model", nargs="?")

    usage = _group(subparsers, "usage", "the usage ledger")
    report = _command(usage, "report", "requests, tokens and cost by day (UTC), principal and model", _usage_report)
    report.add_argument("--since", type=_day, help="first day to include, YYYY-MM-DD (UTC)")


# principals and keys


async def _principal_create(args: argparse.Namespace, store: ControlStore) -> int:
    principal = await store.create_principal(args.name)
    _print_fields([("id", principal.id), ("name", principal.name), ("created", principal.created_at)])
    return 0


async def _principal_list(args: argparse.Namespace, store: ControlStore) -> int:
    principals = await store.list_principals()
    _print_table(("ID", "NAME", "CREATED"), [(p.id, p.name, p.created_at) for p in principals])
    return 0


async def _key_create(args: argparse.Namespace, store: ControlStore) -> int:
    principal = await store.get_principal(args.principal)
    key, secret = await store.create_api_key(principal.id, admin=args.admin)
    _print_fields([("key id", key.id), ("principal", principal.name), ("admin", key.is_admin), ("secret", secret)])
    print()
    print("This secret will not be shown again: only its hash is stored. Keep it somewhere safe now.")
    return 0


async def _key_revoke(args: argparse.Namespace, store: ControlStore) -> int:
    await store.revoke_api_key(args.key_id)
    print(f"revoked {args.key_id}")
    return 0


async def _key_list(args: argparse.Namespace, store: ControlStore) -> int:
    principal_id = None if args.principal is None else (await store.get_principal(args.principal)).id
    keys = await store.list_api_keys(principal_id)
    names = {p.id: p.name for p in await store.list_principals()}
    _print_table(
        ("ID", "PRINCIPAL", "ADMIN", "CREATED", "REVOKED"),
        [(k.id, names.get(k.principal_id, k.principal_id), k.is_admin, k.created_at, k.revoked_at) for k in keys],
    )
    return 0


# endpoints and models


async def _endpoint_add(args: argparse.Namespace, store: ControlStore) -> int:
    endpoint = Endpoint(name=args.name, base_url=args.base_url, api_key=args.api_key)
    await store.put_endpoint(endpoint)
    _print_fields([("name", endpoint.name), ("base url", endpoint.base_url), ("api key", _key_state(endpoint))])
    return 0


async def _endpoint_list(args: argparse.Namespace, store: ControlStore) -> int:
    catalog = await store.load_catalog()
    _print_table(
        ("NAME", "BASE URL", "API KEY"),
        [(e.name, e.base_url, _key_state(e)) for e in sorted(catalog.endpoints.values(), key=lambda e: e.name)],
    )
    return 0


async def _model_add(args: argparse.Namespace, store: ControlStore) -> int:
    model = Model(
        alias=args.alias,
        endpoint=args.endpoint[0],
        upstream_model=args.upstream_model,
        tokenizer=args.tokenizer,
        input_price=args.input_price,
        output_price=args.output_price,
        automatic_cache_ttl=args.automatic_caching,
    ).with_endpoints(args.endpoint)
    await store.put_model(model)
    _print_fields(
        [
            ("alias", model.alias),
            ("endpoint", ", ".join(model.endpoints)),
            ("upstream model", model.upstream_model),
            ("tokenizer", model.tokenizer),
            ("input price", model.input_price),
            ("output price", model.output_price),
            ("automatic caching", _automatic(model)),
        ]
    )
    return 0


def _model_add_fits(args: argparse.Namespace, config: Config) -> str | None:
    if len(set(args.endpoint)) != len(args.endpoint):
        return "--endpoint names an endpoint twice"
    if args.tokenizer not in config.tokenizers:
        known = ", ".join(sorted(config.tokenizers))
        return f"unknown tokenizer {args.tokenizer!r}: the configuration has {known}"
    ttl = args.automatic_caching
    if ttl is not None and ttl not in config.accepted_ttls:
        accepted = ", ".join(str(tier) for tier in config.accepted_ttls)
        return f"--automatic-caching {ttl} is not an accepted TTL: the configuration accepts {accepted}"
    return None


async def _model_list(args: argparse.Namespace, store: ControlStore) -> int:
    catalog = await store.load_catalog()
    now = utcnow()
    _print_table(
        ("ALIAS", "ENDPOINT", "UPSTREAM MODEL", "TOKENIZER", "INPUT PRICE", "OUTPUT PRICE", "CACHE", "AUTOMATIC"),
        [
            (
                m.alias,
                ",".join(m.endpoints),
                m.upstream_model,
                m.tokenizer,
                m.input_price,
                m.output_price,
                "on" if catalog.tariff_at(m.alias, now) else "off",
                _automatic(m),
            )
            for m in sorted(catalog.models.values(), key=lambda m: m.alias)
        ],
    )
    return 0


def _automatic(model: Model) -> str:
    return "off" if model.automatic_cache_ttl is None else model.automatic_cache_ttl.value


# tariffs


async def _tariff_set(args: argparse.Namespace, store: ControlStore) -> int:
    tariff = CacheTariff(
        write_multiplier_5m=decimal_text(args.write_5m),
        write_multiplier_1h=decimal_text(args.write_1h),
        write_multiplier_24h=decimal_text(args.write_24h),
        read_multiplier=decimal_text(args.read),
        min_prefix_tokens=args.min_prefix_tokens,
    )
    version = await store.set_cache_tariff(args.model, tariff)
    _print_tariff_table([version], utcnow())
    return 0


async def _tariff_disable(args: argparse.Namespace, store: ControlStore) -> int:
    if await store.disable_cache_tariff(args.model):
        print(f"closed the cache tariff of {args.model}: caching is off for it")
    else:
        print(f"{args.model} had no cache tariff in force: nothing changed")
    return 0


async def _tariff_list(args: argparse.Namespace, store: ControlStore) -> int:
    catalog = await store.load_catalog()
    if args.model is not None and args.model not in catalog.models:
        raise NotFound(f"model {args.model!r} does not exist")
    aliases = sorted(catalog.tariffs) if args.model is None else [args.model]
    _print_tariff_table([v for alias in aliases for v in catalog.tariffs.get(alias, ())], utcnow())
    return 0


def _print_tariff_table(versions: Sequence[TariffVersion], now: datetime) -> None:
    _print_table(
        ("MODEL", "STATE", "VALID FROM", "VALID UNTIL", "WRITE 5M", "WRITE 1H", "WRITE 24H", "READ", "MIN PREFIX"),
        [
            (
                v.model,
                _tariff_state(v, now),
                v.valid_from,
                v.valid_until,
                Decimal(v.tariff.write_multiplier_5m),
                Decimal(v.tariff.write_multiplier_1h),
                Decimal(v.tariff.write_multiplier_24h),
                Decimal(v.tariff.read_multiplier),
                v.tariff.min_prefix_tokens,
            )
            for v in versions
        ],
    )


def _tariff_state(version: TariffVersion, now: datetime) -> str:
    if version.in_force(now):
        return "in force"
    return "scheduled" if now < version.valid_from else "ended"


# usage


async def _usage_report(args: argparse.Namespace, store: ControlStore) -> int:
    rows = await store.usage_report(args.since)
    names = {p.id: p.name for p in await store.list_principals()}
    _print_table(
        (
            "DAY",
            "PRINCIPAL",
            "MODEL",
            "ROUTE",
            "REQUESTS",
            "PROMPT",
            "COMPLETION",
            "CACHE READ",
            "CACHE WRITE",
            "COST",
            "LIST COST",
            "DEGRADED",
        ),
        [
            (
                r.day,
                names.get(r.principal_id, r.principal_id),
                r.model,
                r.route,
                r.requests,
                r.prompt_tokens,
                r.completion_tokens,
                r.cache_read_tokens,
                r.cache_creation_tokens,
                r.cost,
                r.list_cost,
                r.degraded,
            )
            for r in rows
        ],
    )
    return 0


# argument types


def _price(text: str) -> Decimal:
    try:
        return parse_decimal(text, "the value")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _token_count(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise argparse.ArgumentTypeError(f"the value must be a whole number of tokens, not {text!r}")
    return int(text)


def _day(text: str) -> datetime:
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a day as YYYY-MM-DD, not {text!r}") from None
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _http_url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"expected an http:// or https:// URL, not {text!r}")
    return text


# plumbing


def _group(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_text: str
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    return parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)


def _command(
    group: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_text: str, command: AdminCommand
) -> argparse.ArgumentParser:
    parser = group.add_parser(name, help=help_text, description=help_text)
    parser.set_defaults(run=_with_store(command))
    return parser


def _with_store(command: AdminCommand) -> Callable[[argparse.Namespace, Config], Awaitable[int]]:
    """``command`` as the CLI runs every command: checked against the configuration, then run with
    the control store open; a store error is one line on stderr and exit 1."""

    @functools.wraps(command)
    async def run(args: argparse.Namespace, config: Config) -> int:
        check = getattr(args, "check", None)
        problem = check(args, config) if check is not None else None
        if problem is not None:
            print(f"cachegate: {problem}", file=sys.stderr)
            return 2
        store = await open_store(config.store_url)  # unreachable: the CLI's own one line
        try:
            await store.migrate()
            try:
                return await command(args, store)
            except StoreError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
        finally:
            await store.aclose()

    return run


def _key_state(endpoint: Endpoint) -> str:
    """Whether an upstream key is set; the key itself is a secret and is never printed."""
    return "set" if endpoint.api_key else "none"


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    if isinstance(value, Decimal):
        return decimal_text(value)
    return str(value)


def _is_number(value: object) -> bool:
    return isinstance(value, int | Decimal) and not isinstance(value, bool)


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Aligned columns under a header; numeric columns are right-aligned."""
    cells = [[_cell(value) for value in row] for row in rows]
    columns = range(len(headers))
    widths = [max([len(headers[c]), *(len(row[c]) for row in cells)]) for c in columns]
    numeric = [bool(rows) and all(_is_number(row[c]) for row in rows) for c in columns]
    for line in [list(headers), *cells]:
        aligned = (text.rjust(widths[c]) if numeric[c] else text.ljust(widths[c]) for c, text in enumerate(line))
        print("  ".join(aligned).rstrip())


def _print_fields(fields: Sequence[tuple[str, object]]) -> None:
    """One object as ``label  value`` lines."""
    width = max(len(label) for label, _ in fields)
    for label, value in fields:
        print(f"{label.ljust(width)}  {_cell(value)}")

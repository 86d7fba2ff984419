"""The ``cachegate`` admin commands: principals, API keys, endpoints, models, tariffs, budgets,
rate limits, usage.

Each command parses its arguments, calls the operation of ``cachegate.operations`` (the one the
admin HTTP API calls too) and prints what it returns. ``register`` adds them to the main parser.
Each sets ``run``, as every ``cachegate`` command does: an async callable of the arguments and
the configuration whose result is the exit code; for an admin command it opens the control
store (migrated), runs the command with it and closes it. A command given names the
configuration defines (a tokenizer, a TTL) also sets ``check``, called with the configuration
first: a name the gateway could not serve is refused (exit 2) before the store is touched,
instead of every request to it failing later. A store error (a name that does not exist or
exists already, an out-of-order tariff, the store unreachable) prints one line on stderr and
exits 1; malformed arguments, such as a price that is not a plain non-negative decimal, are
argparse's business and exit 2, as is an argument an operation refuses (``InvalidArgument``).
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from urllib.parse import urlsplit

from cachegate import operations
from cachegate.config import Config
from cachegate.core.types import CacheTariff, TtlTier
from cachegate.operations import InvalidArgument
from cachegate.operations.usage import (
    TABLE_COLUMNS,
    UsageFormat,
    UsageParameters,
    parse_time,
    table_rows,
    usage_csv,
    usage_json,
)
from cachegate.store.base import (
    BudgetPeriod,
    BudgetSubject,
    ControlStore,
    Model,
    RateLimit,
    StoreError,
    TariffVersion,
)
from cachegate.store.factory import open_store
from cachegate.store.values import decimal_text, parse_decimal, utcnow

AdminCommand = Callable[[argparse.Namespace, ControlStore, Config], Awaitable[int]]
"""Runs one command with the store open; the configuration is there for the checks an operation makes."""
ConfigCheck = Callable[[argparse.Namespace, Config], str | None]
"""Returns why the arguments do not fit the configuration, or None."""

_DEFAULT_TARIFF = CacheTariff()
_DEFAULT_TOKENIZER = "qwen3"
_USAGE_HELP = "the usage ledger by UTC day, key and model: tokens, cache reads and writes, cost, saving, misses"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``principal``, ``key``, ``endpoint``, ``model``, ``tariff``, ``budget``, ``limit`` and
    ``usage`` commands."""
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

    budget = _group(subparsers, "budget", "spend caps per key or principal over a UTC day, month, or in total")
    set_ = _command(budget, "set", "set or replace a budget", _budget_set)
    set_.add_argument("limit", type=_price, help="the most the subject may be billed in the period, e.g. 25.00")
    _budget_subject(set_, required=True)
    _budget_period(set_)
    delete = _command(budget, "delete", "delete a budget", _budget_delete)
    _budget_subject(delete, required=True)
    _budget_period(delete)
    listing = _command(budget, "list", "list the budgets", _budget_list)
    _budget_subject(listing, required=False)

    limit = _group(subparsers, "limit", "rate limits per API key: requests and input tokens per minute")
    set_ = _command(limit, "set", "set or replace a key's rate limits (a limit not given is off)", _limit_set)
    set_.add_argument("key_id")
    set_.add_argument("--requests-per-minute", type=_positive_count, metavar="N")
    set_.add_argument(
        "--input-tokens-per-minute",
        type=_positive_count,
        metavar="N",
        help="uncached input and cache writes; cache reads do not count",
    )
    delete = _command(limit, "delete", "lift a key's rate limits", _limit_delete)
    delete.add_argument("key_id")
    listing = _command(limit, "list", "list the keys' rate limits", _limit_list)
    listing.add_argument("key_id", nargs="?")

    usage = subparsers.add_parser("usage", help=_USAGE_HELP, description=_USAGE_HELP)
    usage.set_defaults(run=_with_store(_usage))
    usage.add_argument("--since", type=_time_bound("since"), help="from this day (YYYY-MM-DD, UTC) or timestamp")
    usage.add_argument(
        "--until", type=_time_bound("until"), help="through this day (YYYY-MM-DD, UTC), or before this timestamp"
    )
    usage.add_argument("--principal", help="only this principal's usage (name or id)")
    usage.add_argument(
        "--format", type=UsageFormat, choices=list(UsageFormat), default=UsageFormat.TABLE, help="default: table"
    )


# principals and keys


async def _principal_create(args: argparse.Namespace, store: ControlStore, config: Config) -> int:
    principal = await operations.create_principal(store, args.name)
    _print_fields([("id", principal.id), ("name", principal.name), ("created", principal.created_at)])
    return 0


async def _principal_list(args: argparse.Namespace, store: ControlStore, config: Config) -> int:
    principals = await operations.list_principals(store)
    _print_table(("ID", "NAME", "CREATED"), [(p.id, p.name, p.created_at) for p in principals])
    return 0


async def _key_create(args: argparse.Namespace, store: ControlStore, config: Config) -> int:
    created = await operations.create_key(store, args.principal, admin=args.admin)
    _print_fields(
        [
            ("key id", created.key.id),
            ("principal", created.principal.name),
            ("admin", created.key.is_admin),
            ("secret", created.secret),
        ]
    )
    print()
    print("This secret will not be shown again: only its hash is stored. Keep it somewhere safe now.")
    return 0


async def _key_revoke(args: argparse.Namespace, store: ControlStore, config: Config) -> int:
    await operations.revoke_key(store, args.key_id)
    print(f"revoked {args.key_id}")
    return 0


async def _key_list(args: argparse.Namespace, store: ControlStore, config: Config) -> int:
    views = await operations.list_keys(store, args.principal)
    _print_table(
        ("ID", "PRINCIPAL", "ADMIN", "CREATED", "REVOKED"),
        [(v.key.id, v.principal_name, v.key.is_admin, v.key.created_at, v.key.revoked_at) for v in views],
    )
    return 0


# endpoints and models


async def _endpoint_add(args: argparse.Namespace, store: ControlStore, config: Config) -> int:
    endpoint = await operations.put_endpoint(store, args.name, args.base_url, args.api_key)
    _print_fields(
        [
            ("name", endpoint.name),
            ("base url", endpoint.base_url),
            ("api key", operations.upstream_key_state(endpoint)),
        ]
    )
    return 0


async def _endpoint_list(args: argparse.Namespace, store: ControlStore, config: Config) -> int:
    endpoints = await operations.list_endpoints(store)
    _print_table(
        ("NAME", "BASE URL", "API KEY"),
        [(e.name, e.base_url, operations.upstream_key_state(e)) for e in endpoints],
    )
    return 0


async def _model_add(args: argparse.Namespace, store: ControlStore, config: Config) -> int:
    model = Model(
        alias=args.alias,
        endpoint=args.endpoint[0],
        upstream_model=args.upstream_model,
        tokenizer=args.tokenizer,
        input_price=args.input_price,
        output_price=args.output_price,
        automatic_cache_ttl=args.automatic_caching,
    ).with_endpoints(args.endpoint)
    await operations.put_model(store, config, model)
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
    """Refused before the store is opened; an option is named as it is spelt on the command line."""
    problem = operations.model_fits(config, args.endpoint, args.tokenizer, args.automatic_caching)
    if problem is None:
        return None
    option = "--" + problem.argument.replace("_", "-")
    return option + problem.message.removeprefix(problem.argument)


async def _model_list(args: argparse.Namespace, store: ControlStore, config: Config) -> int:
    views = await operations.list_models(store)
    _print_table(
        ("ALIAS", "ENDPOINT", "UPSTREAM MODEL", "TOKENIZER", "INPUT PRICE", "OUTPUT PRICE", "CACHE", "AUTOMATIC"),
        [
            (
                v.model.alias,
                ",".join(v.model.endpoints),
                v.model.upstream_model,
                v.model.tokenizer,
                v.model.input_price,
                v.model.output_price,
                "on" if v.caching else "off",
                _automatic(v.model),
            )
            for v in views
        ],
    )
    return 0


def _automatic(model: Model) -> str:
    return "off" if model.automatic_cache_ttl is None else model.automatic_cache_ttl.value


# tariffs


async def _tariff_set(args: argparse.Namespace, store: ControlStore, config: Config) -> int:
    version = await operations.set_tariff(
        store,
        args.model,
        write_5m=args.write_5m,
        write_1h=args.write_1h,
        write_24h=args.write_24h,
        read=args.read,
        min_prefix_tokens=args.min_prefix_tokens,
    )
    _print_tariff_table([version], utcnow())
    return 0


async def _tariff_disable(args: argparse.Namespace, store: ControlStore, config: Config) -> int:
    if await operations.disable_tariff(store, args.model):
        print(f"closed the cache tariff of {args.model}: caching is off for it")
    else:
        print(f"{args.model} had no cache tariff in force: nothing changed")
    return 0


async def _tariff_list(args: argparse.Namespace, store: ControlStore, config: Config) -> int:
    _print_tariff_table(await operations.list_tariffs(store, args.model), utcnow())
    return 0


def _print_tariff_table(versions: Sequence[TariffVersion], now: datetime) -> None:
    _print_table(
        ("MODEL", "STATE", "VALID FROM", "VALID UNTIL", "WRITE 5M", "WRITE 1H", "WRITE 24H", "READ", "MIN PREFIX"),
        [
            (
                v.model,
                operations.tariff_state(v, now),
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


# budgets and rate limits


def _budget_subject(parser: argparse.ArgumentParser, *, required: bool) -> None:
    subject = parser.add_mutually_exclusive_group(required=required)
    subject.add_argument("--key", metavar="KEY_ID", help="the budget of this API key")
    subject.add_argument("--principal", metavar="NAME", help="the budget of this principal (name or id)")


def _budget_period(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--period",
        type=BudgetPeriod,
        choices=list(BudgetPeriod),
        required=True,
        help="a calendar day or month in UTC, or all time",
    )


def _subject_of(args: argparse.Namespace) -> tuple[BudgetSubject, str]:
    if args.key is not None:
        return BudgetSubject.KEY, args.key
    return BudgetSubject.PRINCIPAL, args.principal


async def _budget_set(args: argparse.Namespace, store: ControlStore, config: Config) -> int:
    subject, who = _subject_of(args)
    view = await operations.set_budget(store, subject, who, args.period, args.limit)
    _print_fields(
        [
            ("subject", view.budget.subject.value),
            ("id", view.budget.subject_id),
            ("name", view.principal_name),
            ("period", view.budget.period.value),
            ("limit", view.budget.limit),
        ]
    )
    return 0


async def _budget_delete(args: argparse.Namespace, store: ControlStore, config: Config) -> int:
    subject, who = _subject_of(args)
    if await operations.delete_budget(store, subject, who, args.period):
        print(f"deleted the {args.period} budget of {subject} {who}")
    else:
        print(f"{subject} {who} had no {args.period} budget: nothing changed")
    return 0


async def _budget_list(args: argparse.Namespace, store: ControlStore, config: Config) -> int:
    views = await operations.list_budgets(store, key=args.key, principal=args.principal)
    _print_table(
        ("SUBJECT", "ID", "NAME", "PERIOD", "LIMIT"),
        [
            (v.budget.subject.value, v.budget.subject_id, v.principal_name, v.budget.period.value, v.budget.limit)
            for v in views
        ],
    )
    return 0


async def _limit_set(args: argparse.Namespace, store: ControlStore, config: Config) -> int:
    limit = await operations.set_rate_limit(
        store,
        args.key_id,
        requests_per_minute=args.requests_per_minute,
        input_tokens_per_minute=args.input_tokens_per_minute,
    )
    _print_fields(
        [
            ("key id", limit.key_id),
            ("requests per minute", _limit_cell(limit.requests_per_minute)),
            ("input tokens per minute", _limit_cell(limit.input_tokens_per_minute)),
        ]
    )
    return 0


async def _limit_delete(args: argparse.Namespace, store: ControlStore, config: Config) -> int:
    if await operations.delete_rate_limit(store, args.key_id):
        print(f"lifted the rate limits of {args.key_id}")
    else:
        print(f"{args.key_id} had no rate limits: nothing changed")
    return 0


async def _limit_list(args: argparse.Namespace, store: ControlStore, config: Config) -> int:
    limits: list[RateLimit] = (
        await operations.list_rate_limits(store)
        if args.key_id is None
        else [await operations.get_rate_limit(store, args.key_id)]
    )
    _print_table(
        ("KEY", "REQUESTS/MIN", "INPUT TOKENS/MIN"),
        [(r.key_id, _limit_cell(r.requests_per_minute), _limit_cell(r.input_tokens_per_minute)) for r in limits],
    )
    return 0


def _limit_cell(value: int | None) -> int | str:
    return "off" if value is None else value


# usage


async def _usage(args: argparse.Namespace, store: ControlStore, config: Config) -> int:
    report = await operations.usage(store, UsageParameters(args.since, args.until, args.principal, args.format))
    if args.format is UsageFormat.JSON:
        print(usage_json(report).decode())
    elif args.format is UsageFormat.CSV:
        print(usage_csv(report), end="")
    else:
        _print_table([header for header, _ in TABLE_COLUMNS], table_rows(report))
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


def _positive_count(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"the value must be a positive whole number, not {text!r}")
    return int(text)


def _time_bound(parameter: str) -> Callable[[str], datetime]:
    def parse(text: str) -> datetime:
        try:
            return parse_time(text, parameter, until=parameter == "until")
        except InvalidArgument as exc:
            raise argparse.ArgumentTypeError(exc.message) from None

    return parse


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
    the control store open; a store error is one line on stderr and exit 1, an argument the
    operation refuses one line and exit 2."""

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
                return await command(args, store, config)
            except StoreError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            except InvalidArgument as exc:
                print(f"cachegate: {exc.message}", file=sys.stderr)
                return 2
        finally:
            await store.aclose()

    return run


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

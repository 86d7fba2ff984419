"""The admin commands, driven through argparse against a SQLite store."""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from cachegate import admin
from cachegate.config import Config
from cachegate.store.base import ControlStore, LedgerRow
from cachegate.store.keys import hash_secret
from cachegate.store.sqlite import SqliteStore


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


Cli = Callable[..., Awaitable[Result]]


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[ControlStore]:
    opened = await SqliteStore.open(tmp_path / "control.db")
    await opened.migrate()
    yield opened
    await opened.aclose()


@pytest.fixture
def cli(sqlite_store: ControlStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run ``cachegate ARGS…`` as cli.py does (on the store ``sqlite_store`` holds), returning the
    exit code and output."""
    parser = argparse.ArgumentParser(prog="cachegate")
    admin.register(parser.add_subparsers(dest="command", required=True))
    config = Config(data_dir=tmp_path)  # its control store is tmp_path/control.db, sqlite_store's file

    async def run(*argv: str) -> Result:
        capsys.readouterr()
        args = parser.parse_args(argv)
        code = await args.run(args, config)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def table(result: Result) -> list[dict[str, str]]:
    """The rows of a printed table, by header; columns are separated by two spaces or more."""
    header, *rows = result.lines
    names = re.split(r" {2,}", header.strip())
    return [dict(zip(names, re.split(r" {2,}", row.strip()), strict=True)) for row in rows]


def fields(result: Result) -> dict[str, str]:
    """The ``label  value`` lines of one printed object."""
    return dict(re.split(r" {2,}", line.strip(), maxsplit=1) for line in result.lines)  # type: ignore[misc]


async def test_principals_are_created_and_listed(cli: Cli) -> None:
    created = await cli("principal", "create", "zeta")
    await cli("principal", "create", "acme")

    listing = await cli("principal", "list")

    assert created.code == 0 and "zeta" in created.out
    assert [(row["NAME"], row["ID"][:4]) for row in table(listing)] == [("acme", "prn_"), ("zeta", "prn_")]


async def test_a_duplicate_principal_is_one_line_on_stderr(cli: Cli) -> None:
    await cli("principal", "create", "acme")

    again = await cli("principal", "create", "acme")

    assert (again.code, again.out, again.err) == (1, "", "error: principal 'acme' already exists\n")


async def test_a_key_secret_is_printed_once_and_only_its_hash_kept(cli: Cli, sqlite_store: ControlStore) -> None:
    await cli("principal", "create", "acme")

    created = await cli("key", "create", "acme", "--admin")
    listing = await cli("key", "list")

    [secret] = [line.split()[-1] for line in created.lines if line.startswith("secret")]
    key = await sqlite_store.find_api_key(hash_secret(secret))
    assert key is not None and key.is_admin
    assert "will not be shown again" in created.out
    assert secret not in listing.out
    [row] = table(listing)
    assert (row["ID"], row["PRINCIPAL"], row["ADMIN"], row["REVOKED"]) == (key.id, "acme", "yes", "-")


async def test_a_revoked_key_shows_when_it_was_revoked(cli: Cli, sqlite_store: ControlStore) -> None:
    acme = await sqlite_store.create_principal("acme")
    zeta = await sqlite_store.create_principal("zeta")
    key, _ = await sqlite_store.create_api_key(acme.id)
    await sqlite_store.create_api_key(zeta.id)

    revoked = await cli("key", "revoke", key.id)
    listing = await cli("key", "list", "--principal", "acme")

    assert revoked.code == 0
    [row] = table(listing)
    assert row["ID"] == key.id
    assert datetime.strptime(row["REVOKED"], "%Y-%m-%d %H:%M:%SZ").year == datetime.now(UTC).year


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("key", "create", "ghost"), "principal 'ghost' does not exist"),
        (("key", "revoke", "key_ghost"), "API key 'key_ghost' does not exist"),
        (("key", "list", "--principal", "ghost"), "principal 'ghost' does not exist"),
        (("model", "add", "m", "--endpoint", "ghost", "--upstream-model", "x"), "endpoint 'ghost' does not exist"),
        (("tariff", "set", "ghost"), "model 'ghost' does not exist"),
        (("tariff", "disable", "ghost"), "model 'ghost' does not exist"),
        (("tariff", "list", "ghost"), "model 'ghost' does not exist"),
    ],
)
async def test_unknown_names_are_one_line_on_stderr(cli: Cli, argv: tuple[str, ...], message: str) -> None:
    result = await cli(*argv)

    assert (result.code, result.out, result.err) == (1, "", f"error: {message}\n")


async def test_an_endpoint_key_is_never_printed(cli: Cli) -> None:
    added = await cli("endpoint", "add", "vllm", "http://10.0.0.5:8000/v1", "--api-key", "sk-upstream-secret")
    await cli("endpoint", "add", "open", "https://llm.example/v1")

    listing = await cli("endpoint", "list")

    assert "sk-upstream-secret" not in added.out + listing.out
    assert [(row["NAME"], row["BASE URL"], row["API KEY"]) for row in table(listing)] == [
        ("open", "https://llm.example/v1", "none"),
        ("vllm", "http://10.0.0.5:8000/v1", "set"),
    ]


async def test_models_show_their_prices_and_whether_caching_is_on(cli: Cli) -> None:
    await cli("endpoint", "add", "vllm", "http://10.0.0.5:8000/v1")
    await cli(
        "model", "add", "big", "--endpoint", "vllm", "--upstream-model", "Qwen/Qwen3-32B",
        "--input-price", "0.0000025", "--output-price", "0.00001",
    )  # fmt: skip
    await cli(
        "model", "add", "small", "--endpoint", "vllm", "--upstream-model", "Qwen/Qwen3-0.6B",
        "--automatic-caching", "1h",
    )  # fmt: skip
    await cli("tariff", "set", "big")

    listing = await cli("model", "list")

    assert table(listing) == [
        {"ALIAS": "big", "ENDPOINT": "vllm", "UPSTREAM MODEL": "Qwen/Qwen3-32B", "TOKENIZER": "qwen3",
         "INPUT PRICE": "0.0000025", "OUTPUT PRICE": "0.00001", "CACHE": "on", "AUTOMATIC": "off"},
        {"ALIAS": "small", "ENDPOINT": "vllm", "UPSTREAM MODEL": "Qwen/Qwen3-0.6B", "TOKENIZER": "qwen3",
         "INPUT PRICE": "0", "OUTPUT PRICE": "0", "CACHE": "off", "AUTOMATIC": "1h"},
    ]  # fmt: skip


async def test_a_model_may_name_several_endpoints(cli: Cli) -> None:
    for name in ("r1", "r2", "r3"):
        await cli("endpoint", "add", name, f"http://{name}.example/v1")

    added = await cli("model", "add", "m", "--endpoint", "r2", "--endpoint", "r1", "--endpoint", "r3",
                      "--upstream-model", "x")  # fmt: skip
    twice = await cli("model", "add", "m", "--endpoint", "r1", "--endpoint", "r1", "--upstream-model", "x")
    listing = await cli("model", "list")

    assert added.code == 0 and "endpoint           r2, r1, r3" in added.lines
    assert twice.code == 2 and "names an endpoint twice" in twice.err
    assert [row["ENDPOINT"] for row in table(listing)] == ["r2,r1,r3"]


async def test_tariff_versions_are_set_listed_and_closed(cli: Cli) -> None:
    await cli("endpoint", "add", "vllm", "http://10.0.0.5:8000/v1")
    await cli("model", "add", "m", "--endpoint", "vllm", "--upstream-model", "x")
    multipliers = ("WRITE 5M", "WRITE 1H", "WRITE 24H", "READ", "MIN PREFIX")

    first = await cli("tariff", "set", "m")
    await cli("tariff", "set", "m", "--read", "0.05", "--write-1h", "1.8", "--min-prefix-tokens", "2048")
    listing = await cli("tariff", "list", "m")
    disabled = await cli("tariff", "disable", "m")
    again = await cli("tariff", "disable", "m")
    after = await cli("tariff", "list")

    [opened] = table(first)
    assert [opened[name] for name in multipliers] == ["1.25", "2.0", "2.5", "0.1", "1024"]
    ended, in_force = table(listing)
    assert (ended["STATE"], ended["VALID UNTIL"]) == ("ended", in_force["VALID FROM"])
    assert [in_force[name] for name in ("STATE", "VALID UNTIL", *multipliers)] == [
        "in force", "-", "1.25", "1.8", "2.5", "0.05", "2048",
    ]  # fmt: skip
    assert disabled.code == 0 and "closed" in disabled.out
    assert again.code == 0 and "no cache tariff in force" in again.out
    assert [row["STATE"] for row in table(after)] == ["ended", "ended"]


@pytest.mark.parametrize("price", ["-1", "0.1.2", "1e-3", "cheap", "nan"])
async def test_a_malformed_price_is_a_usage_error(cli: Cli, price: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        await cli("tariff", "set", "m", "--read", price)

    assert exited.value.code == 2
    assert "argument --read: the value must be a non-negative decimal" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ("endpoint", "add", "e", "localhost:8000"),
        ("model", "add", "m", "--endpoint", "e", "--upstream-model", "x", "--input-price", "-0.1"),
        ("tariff", "set", "m", "--min-prefix-tokens", "-5"),
        ("usage", "--since", "yesterday"),
        ("usage", "--until", "2025-03-01T00:00:00"),  # a timestamp needs its offset
        ("usage", "--format", "xml"),
    ],
)
async def test_other_malformed_arguments_are_usage_errors(cli: Cli, argv: tuple[str, ...]) -> None:
    with pytest.raises(SystemExit) as exited:
        await cli(*argv)

    assert exited.value.code == 2


async def usage_ledger(store: ControlStore) -> tuple[str, str]:
    """Four requests of acme's (three on March 1st, one on the 2nd) and one of zeta's; their ids."""
    acme = await store.create_principal("acme")
    zeta = await store.create_principal("zeta")
    day = datetime(2025, 3, 1, 12, tzinfo=UTC)
    row = LedgerRow(
        at=day, principal_id=acme.id, key_id="key_x", model="m", status=200, streaming=True,
        prompt_tokens=1000, completion_tokens=100, cache_read_tokens=600, cache_creation_5m_tokens=200,
        cache_creation_1h_tokens=0, cache_creation_24h_tokens=0, upstream_cached_tokens=600,
        cost=Decimal("0.1"), list_cost=Decimal("0.25"), latency_ms=40.0, degraded=False,
        counted_prompt_tokens=1002, miss_reason=None,
    )  # fmt: skip
    next_day = replace(row, at=day + timedelta(days=1), cost=Decimal("0.01"), degraded=True, miss_reason="degraded")
    zetas = replace(row, principal_id=zeta.id, key_id="key_z", miss_reason="first_write")
    await store.append_ledger([row, row, row, next_day, zetas])
    return acme.id, zeta.id


async def test_usage_is_a_table_by_day_key_and_model(cli: Cli, sqlite_store: ControlStore) -> None:
    await usage_ledger(sqlite_store)

    report = await cli("usage")
    since = await cli("usage", "--since", "2025-03-02")
    until = await cli("usage", "--until", "2025-03-01")
    acme = await cli("usage", "--principal", "acme", "--until", "2025-03-02T00:00:00Z")

    first, zeta, second = table(report)
    assert first == {
        "DAY": "2025-03-01", "PRINCIPAL": "acme", "KEY": "key_x", "MODEL": "m", "REQUESTS": "3", "PROMPT": "3000",
        "UNCACHED": "600", "READ": "1800", "WRITE 5M": "600", "WRITE 1H": "0", "WRITE 24H": "0",
        "COMPLETION": "300", "COST": "0.3", "LIST COST": "0.75", "SAVING": "0.45", "HIT RATE": "0.6000",
        "DEGRADED": "0", "MISS FIRST WRITE": "0", "MISS EXPIRED": "0", "MISS PREFIX CHANGED": "0",
        "MISS BELOW FLOOR": "0", "MISS DEGRADED": "0", "DRIFT SUM": "6", "DRIFT N": "3",
    }  # fmt: skip
    assert (zeta["PRINCIPAL"], zeta["KEY"], zeta["MISS FIRST WRITE"]) == ("zeta", "key_z", "1")
    assert (second["DAY"], second["COST"], second["DEGRADED"], second["MISS DEGRADED"]) == (
        "2025-03-02",
        "0.01",
        "1",
        "1",
    )
    assert table(since) == [second]
    assert table(until) == [first, zeta]  # a day as --until includes that day
    assert table(acme) == [first]


async def test_usage_as_csv_and_json(cli: Cli, sqlite_store: ControlStore) -> None:
    acme_id, _ = await usage_ledger(sqlite_store)

    as_csv = await cli("usage", "--format", "csv", "--principal", acme_id)
    as_json = await cli("usage", "--format", "json", "--principal", "acme", "--since", "2025-03-02")

    rows = list(csv.DictReader(io.StringIO(as_csv.out)))
    assert [(r["day"], r["principal"], r["requests"], r["cost"], r["saving"]) for r in rows] == [
        ("2025-03-01", "acme", "3", "0.3", "0.45"),
        ("2025-03-02", "acme", "1", "0.01", "0.24"),
    ]
    assert (rows[1]["miss_degraded"], rows[1]["hit_rate"], rows[0]["drift_sum"]) == ("1", "0.6000", "6")
    document = json.loads(as_json.out)
    assert document["since"] == "2025-03-02T00:00:00+00:00" and document["until"] is None
    [group] = document["data"]
    assert group["cost"] == "0.01" and group["list_cost"] == "0.25" and group["misses"]["degraded"] == 1
    assert group["cache_write_5m_tokens"] == 200 and group["uncached_tokens"] == 200


async def test_usage_of_an_unknown_principal_is_refused_and_a_backwards_window_is_empty(
    cli: Cli, sqlite_store: ControlStore
) -> None:
    await usage_ledger(sqlite_store)

    ghost = await cli("usage", "--principal", "ghost")
    backwards = await cli("usage", "--since", "2025-03-02", "--until", "2025-03-01")

    assert ghost.code == 1 and "ghost" in ghost.err
    assert backwards.code == 0 and table(backwards) == []


async def test_numbers_are_right_aligned_under_their_header(cli: Cli) -> None:
    await cli("endpoint", "add", "vllm", "http://10.0.0.5:8000/v1")
    await cli("model", "add", "m", "--endpoint", "vllm", "--upstream-model", "x")
    await cli("tariff", "set", "m", "--min-prefix-tokens", "7")

    listing = await cli("tariff", "list")

    header, row = listing.lines
    assert header.endswith("MIN PREFIX") and row.endswith(" " * len("MIN PREFIX") + "7")
    assert row.index("in force") == header.index("STATE")


async def test_budgets_are_set_replaced_listed_and_deleted(cli: Cli, sqlite_store: ControlStore) -> None:
    acme = await sqlite_store.create_principal("acme")
    key, _ = await sqlite_store.create_api_key(acme.id)

    by_name = await cli("budget", "set", "25.00", "--principal", "acme", "--period", "month")
    await cli("budget", "set", "1.5", "--key", key.id, "--period", "day")
    replaced = await cli("budget", "set", "30", "--principal", acme.id, "--period", "month")
    listing = await cli("budget", "list")
    of_key = await cli("budget", "list", "--key", key.id)
    of_principal = await cli("budget", "list", "--principal", "acme")
    deleted = await cli("budget", "delete", "--key", key.id, "--period", "day")
    again = await cli("budget", "delete", "--key", key.id, "--period", "day")
    after = await cli("budget", "list")

    assert by_name.code == 0
    assert fields(by_name) == {
        "subject": "principal",
        "id": acme.id,
        "name": "acme",
        "period": "month",
        "limit": "25.00",
    }
    assert replaced.code == 0 and fields(replaced)["limit"] == "30"
    assert table(listing) == [
        {"SUBJECT": "key", "ID": key.id, "NAME": "-", "PERIOD": "day", "LIMIT": "1.5"},
        {"SUBJECT": "principal", "ID": acme.id, "NAME": "acme", "PERIOD": "month", "LIMIT": "30"},
    ]
    assert table(of_key) == table(listing)[:1] and table(of_principal) == table(listing)[1:]
    assert (deleted.code, deleted.out) == (0, f"deleted the day budget of key {key.id}\n")
    assert (again.code, again.out) == (0, f"key {key.id} had no day budget: nothing changed\n")
    assert [row["SUBJECT"] for row in table(after)] == ["principal"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("budget", "set", "5", "--principal", "ghost", "--period", "day"), "principal 'ghost' does not exist"),
        (("budget", "set", "5", "--key", "key_ghost", "--period", "total"), "key 'key_ghost' does not exist"),
        (("budget", "list", "--principal", "ghost"), "principal 'ghost' does not exist"),
        (("limit", "set", "key_ghost", "--requests-per-minute", "5"), "API key 'key_ghost' does not exist"),
        (("limit", "list", "key_ghost"), "API key 'key_ghost' does not exist"),
    ],
)
async def test_budgets_and_limits_of_unknown_subjects_are_one_line_on_stderr(
    cli: Cli, argv: tuple[str, ...], message: str
) -> None:
    result = await cli(*argv)

    assert (result.code, result.out, result.err) == (1, "", f"error: {message}\n")


@pytest.mark.parametrize(
    "argv",
    [
        ("budget", "set", "5", "--period", "day"),  # no subject
        ("budget", "set", "5", "--key", "k", "--principal", "p", "--period", "day"),  # two
        ("budget", "set", "5", "--key", "k", "--period", "week"),
        ("budget", "set", "-5", "--key", "k", "--period", "day"),
        ("budget", "delete", "--key", "k"),  # no period
        ("limit", "set", "k", "--requests-per-minute", "0"),
        ("limit", "set", "k", "--input-tokens-per-minute", "lots"),
    ],
)
async def test_malformed_budget_and_limit_arguments_are_usage_errors(cli: Cli, argv: tuple[str, ...]) -> None:
    with pytest.raises(SystemExit) as exited:
        await cli(*argv)

    assert exited.value.code == 2


async def test_rate_limits_are_set_replaced_listed_and_lifted(cli: Cli, sqlite_store: ControlStore) -> None:
    acme = await sqlite_store.create_principal("acme")
    first, _ = await sqlite_store.create_api_key(acme.id)
    second, _ = await sqlite_store.create_api_key(acme.id)

    set_ = await cli("limit", "set", first.id, "--requests-per-minute", "60")
    await cli("limit", "set", second.id, "--requests-per-minute", "10", "--input-tokens-per-minute", "50000")
    replaced = await cli("limit", "set", first.id, "--input-tokens-per-minute", "2000")
    listing = await cli("limit", "list")
    one = await cli("limit", "list", second.id)
    lifted = await cli("limit", "delete", first.id)
    again = await cli("limit", "delete", first.id)
    none_left = await cli("limit", "list", first.id)

    assert set_.code == 0
    assert fields(set_) == {"key id": first.id, "requests per minute": "60", "input tokens per minute": "off"}
    assert fields(replaced)["requests per minute"] == "off"
    rows = {row["KEY"]: row for row in table(listing)}
    assert rows == {
        first.id: {"KEY": first.id, "REQUESTS/MIN": "off", "INPUT TOKENS/MIN": "2000"},
        second.id: {"KEY": second.id, "REQUESTS/MIN": "10", "INPUT TOKENS/MIN": "50000"},
    }
    assert table(one) == [rows[second.id]]
    assert (lifted.code, lifted.out) == (0, f"lifted the rate limits of {first.id}\n")
    assert (again.code, again.out) == (0, f"{first.id} had no rate limits: nothing changed\n")
    assert (none_left.code, none_left.err) == (1, f"error: API key {first.id!r} has no rate limits\n")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("principal", "create", "a/b"), "name must be 1 to 200 characters with no control characters or slashes"),
        (("principal", "create", ".."), "name must be 1 to 200 characters with no control characters or slashes"),
        (("endpoint", "add", "e\tx", "http://h/v1"), "name must be 1 to 200 characters"),
        (("tariff", "set", "m", "--min-prefix-tokens", str(2**31)), "min_prefix_tokens must be a whole number"),
        (("budget", "set", "1" * 21, "--key", "k", "--period", "day"), "limit must be a non-negative decimal"),
    ],
)
async def test_arguments_no_store_could_hold_are_refused_before_it(
    cli: Cli, argv: tuple[str, ...], message: str
) -> None:
    result = await cli(*argv)

    assert result.code == 2 and result.out == ""
    assert result.err.startswith(f"cachegate: {message}")


async def test_a_limit_set_with_no_limit_is_refused(cli: Cli, sqlite_store: ControlStore) -> None:
    key, _ = await sqlite_store.create_api_key((await sqlite_store.create_principal("acme")).id)

    refused = await cli("limit", "set", key.id)

    assert refused.code == 2 and "give requests_per_minute, input_tokens_per_minute or both" in refused.err

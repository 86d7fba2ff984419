"""The admin commands, driven through argparse against a SQLite store."""

from __future__ import annotations

import argparse
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
        ("usage", "report", "--since", "yesterday"),
    ],
)
async def test_other_malformed_arguments_are_usage_errors(cli: Cli, argv: tuple[str, ...]) -> None:
    with pytest.raises(SystemExit) as exited:
        await cli(*argv)

    assert exited.value.code == 2


async def test_usage_is_reported_per_day_principal_and_model(cli: Cli, sqlite_store: ControlStore) -> None:
    acme = await sqlite_store.create_principal("acme")
    day = datetime(2025, 3, 1, 12, tzinfo=UTC)
    row = LedgerRow(
        at=day, principal_id=acme.id, key_id="key_x", model="m", status=200, streaming=True,
        prompt_tokens=1000, completion_tokens=100, cache_read_tokens=600, cache_creation_5m_tokens=200,
        cache_creation_1h_tokens=0, cache_creation_24h_tokens=0, upstream_cached_tokens=600,
        cost=Decimal("0.1"), list_cost=Decimal("0.25"), latency_ms=40.0, degraded=False,
    )  # fmt: skip
    next_day = replace(row, at=day + timedelta(days=1), cost=Decimal("0.01"), degraded=True)
    await sqlite_store.append_ledger([row, row, row, next_day])

    report = await cli("usage", "report")
    since = await cli("usage", "report", "--since", "2025-03-02")

    first, second = table(report)
    assert first == {
        "DAY": "2025-03-01", "PRINCIPAL": "acme", "MODEL": "m", "ROUTE": "chat", "REQUESTS": "3", "PROMPT": "3000",
        "COMPLETION": "300", "CACHE READ": "1800", "CACHE WRITE": "600", "COST": "0.3", "LIST COST": "0.75",
        "DEGRADED": "0",
    }  # fmt: skip
    assert (second["DAY"], second["COST"], second["DEGRADED"]) == ("2025-03-02", "0.01", "1")
    assert table(since) == [second]


async def test_numbers_are_right_aligned_under_their_header(cli: Cli) -> None:
    await cli("endpoint", "add", "vllm", "http://10.0.0.5:8000/v1")
    await cli("model", "add", "m", "--endpoint", "vllm", "--upstream-model", "x")
    await cli("tariff", "set", "m", "--min-prefix-tokens", "7")

    listing = await cli("tariff", "list")

    header, row = listing.lines
    assert header.endswith("MIN PREFIX") and row.endswith(" " * len("MIN PREFIX") + "7")
    assert row.index("in force") == header.index("STATE")

"""Configuration: the embedded default, one YAML file, ``CACHEGATE_*`` overrides, and a ConfigError that says
which key is wrong and why — before anything starts."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachegate.config import Config, ConfigError, load_config
from cachegate.core.types import CacheTariff, TtlTier

EXAMPLE = Path(__file__).resolve().parents[2] / "cachegate.example.yaml"


def one_model(input_price: str = '"0.0000002"', *more_fields: str) -> str:
    """A file with one endpoint and one model; ``more_fields`` are extra YAML lines of the model."""
    fields = [f"input_price: {input_price}", 'output_price: "0.0000006"', *more_fields]
    return (
        "endpoints:\n"
        '  - {name: vllm, base_url: "http://10.0.0.5:8000/v1/"}\n'
        "models:\n"
        "  - alias: chat\n"
        "    endpoint: vllm\n"
        "    upstream_model: Qwen/Qwen3-32B\n" + "".join(f"    {field}\n" for field in fields)
    )


def load_yaml(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Config:
    path = tmp_path / "cachegate.yaml"
    path.write_text(text, encoding="utf-8")
    return load_config(path, environ or {})


def config_error(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as raised:
        load_yaml(tmp_path, text, environ)
    return str(raised.value)


# --- what loads --------------------------------------------------------------------------------


def test_without_a_file_the_embedded_default_runs_the_demo_on_sqlite_under_data_dir() -> None:
    config = load_config(None, {})

    assert config.demo.enabled
    assert config.store_url == f"sqlite:///{Path('data') / 'control.db'}"
    assert config.index_url == f"sqlite:///{Path('data') / 'cache-index.db'}"
    assert config.accepted_ttls == (TtlTier.FIVE_MINUTES, TtlTier.ONE_HOUR)
    assert list(config.tokenizers) == ["qwen3"]


def test_the_sqlite_urls_follow_data_dir() -> None:
    config = load_config(None, {"CACHEGATE_DATA_DIR": "/srv/cachegate"})

    assert (config.store_url, config.index_url) == (
        "sqlite:////srv/cachegate/control.db",
        "sqlite:////srv/cachegate/cache-index.db",
    )


def test_the_ledger_journal_is_on_with_fsync_under_data_dir_by_default() -> None:
    config = load_config(None, {"CACHEGATE_DATA_DIR": "/srv/cachegate"})

    assert config.journal_dir == Path("/srv/cachegate/ledger-journal")
    journal = config.ledger.journal
    assert journal.fsync and (journal.commit_delay_ms, journal.commit_siblings) == (2.0, 5)


def test_the_ledger_journal_can_be_moved_tuned_or_turned_off() -> None:
    moved = load_config(
        None, {"CACHEGATE_LEDGER__JOURNAL__PATH": "/var/lib/j", "CACHEGATE_LEDGER__JOURNAL__FSYNC": "false"}
    )
    off = load_config(None, {"CACHEGATE_LEDGER__JOURNAL__ENABLED": "false"})

    assert moved.journal_dir == Path("/var/lib/j") and not moved.ledger.journal.fsync
    assert off.journal_dir is None


def test_the_example_file_loads_and_validates() -> None:
    config = load_config(EXAMPLE, {})

    assert (config.listen.host, config.listen.port) == ("0.0.0.0", 8080)
    assert config.store_url == config.index_url == "postgresql://postgres@127.0.0.1:5432/cachegate"
    assert not config.demo.enabled
    assert sorted(config.tokenizers) == ["gpt-oss", "my-model", "qwen3", "shared"]
    assert [(endpoint.name, endpoint.base_url) for endpoint in config.endpoints] == [
        ("vllm-a", "http://10.0.0.5:8000/v1")
    ]
    [model] = config.models
    assert (model.alias, model.endpoint, model.upstream_model) == ("qwen3-32b", "vllm-a", "Qwen/Qwen3-32B")
    assert model.input_price == Decimal("0.0000002") and isinstance(model.input_price, Decimal)
    assert model.cache is not None
    assert model.cache.to_tariff() == CacheTariff("1.25", "2.0", "2.5", "0.1", 1024)


def test_the_server_limits_and_key_caches_have_defaults_and_take_overrides() -> None:
    default = load_config(None, {})
    tuned = load_config(
        None,
        {
            "CACHEGATE_SERVER__PER_KEY_CONCURRENCY": "8",
            "CACHEGATE_SERVER__SHUTDOWN_DRAIN_SECONDS": "0",
            "CACHEGATE_AUTH__FAILURES_PER_MINUTE": "3",
            "CACHEGATE_DEADLINES__DISCONNECT_DRAIN_SECONDS": "0",
        },
    )

    assert (default.server.max_header_bytes, default.server.per_key_concurrency) == (65536, 64)
    assert (default.auth.key_cache_seconds, default.deadlines.disconnect_drain_seconds) == (30.0, 5.0)
    assert (tuned.server.per_key_concurrency, tuned.server.shutdown_drain_seconds) == (8, 0.0)
    assert (tuned.auth.failures_per_minute, tuned.deadlines.disconnect_drain_seconds) == (3, 0.0)
    with pytest.raises(ConfigError, match=r"server\.max_header_bytes"):
        load_config(None, {"CACHEGATE_SERVER__MAX_HEADER_BYTES": "10"})


def test_budgets_reload_every_5_s_and_rate_limits_are_in_process_unless_redis_is_named() -> None:
    config = load_config(None, {})
    assert config.budgets.refresh_seconds == 5.0
    assert config.rate_limits.redis_url is None

    shared = load_config(None, {"CACHEGATE_RATE_LIMITS__REDIS_URL": "rediss://cache:6380/1?key_prefix=limits"})
    assert shared.rate_limits.redis_url == "rediss://cache:6380/1?key_prefix=limits"


def test_an_empty_file_means_every_default_without_the_demo(tmp_path: Path) -> None:
    config = load_yaml(tmp_path, "")

    assert config == Config.model_validate({})
    assert not config.demo.enabled


def test_an_endpoint_url_loses_its_trailing_slash(tmp_path: Path) -> None:
    config = load_yaml(tmp_path, one_model())

    assert config.endpoints[0].base_url == "http://10.0.0.5:8000/v1"


# --- environment overrides ---------------------------------------------------------------------


def test_environment_variables_override_the_file() -> None:
    config = load_config(
        EXAMPLE,
        {
            "CACHEGATE_LISTEN__PORT": "9000",
            "CACHEGATE_CACHE_INDEX_URL": "postgresql://index.internal/cachegate",
            "CACHEGATE_ACCEPTED_TTLS": "5m,1h,24h",
            "CACHEGATE_DEADLINES__CLASSIFY_SECONDS": "0.5",
        },
    )

    assert config.listen.port == 9000
    assert config.listen.host == "0.0.0.0"  # the rest of the section stays as the file has it
    assert config.index_url == "postgresql://index.internal/cachegate"
    assert config.store_url == "postgresql://postgres@127.0.0.1:5432/cachegate"
    assert config.accepted_ttls == (TtlTier.FIVE_MINUTES, TtlTier.ONE_HOUR, TtlTier.ONE_DAY)
    assert config.deadlines.classify_seconds == 0.5


def test_environment_variables_override_the_embedded_default() -> None:
    config = load_config(None, {"CACHEGATE_LISTEN__PORT": "9000", "CACHEGATE_DEMO__ENABLED": "false"})

    assert config.listen.port == 9000
    assert not config.demo.enabled


def test_the_process_environment_is_read_when_none_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHEGATE_LISTEN__PORT", "9001")

    assert load_config(None).listen.port == 9001


def test_cachegate_config_names_the_file_and_is_no_override() -> None:
    config = load_config(EXAMPLE, {"CACHEGATE_CONFIG": str(EXAMPLE), "PATH": "/usr/bin", "HOME": "/root"})

    assert config == load_config(EXAMPLE, {})


def test_listed_ttls_may_carry_spaces() -> None:
    config = load_config(None, {"CACHEGATE_ACCEPTED_TTLS": "5m, 24h"})

    assert config.accepted_ttls == (TtlTier.FIVE_MINUTES, TtlTier.ONE_DAY)


# --- what is refused, and how it is said -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "named"),
    [
        pytest.param("lisen: {port: 9000}", "lisen: Extra inputs are not permitted", id="unknown-key"),
        pytest.param("listen: {prot: 9000}", "listen.prot: Extra inputs are not permitted", id="unknown-nested-key"),
        pytest.param("listen: {port: 70000}", "listen.port", id="port-too-large"),
        pytest.param("listen: {port: -1}", "listen.port", id="negative-port"),
        pytest.param("listen: {port: http}", "listen.port", id="port-not-a-number"),
        pytest.param(
            "accepted_ttls: [1h, 24h]", "accepted_ttls: Value error, 5m must be accepted", id="ttls-without-5m"
        ),
        pytest.param("accepted_ttls: [5m, 2h]", "accepted_ttls.1", id="unknown-ttl"),
        pytest.param("accepted_ttls: []", "accepted_ttls", id="no-ttl"),
        pytest.param("deadlines: {classify_seconds: 0}", "deadlines.classify_seconds", id="zero-deadline"),
        pytest.param(
            "endpoints: [{name: vllm, base_url: '10.0.0.5:8000'}]",
            "endpoints.0.base_url: Value error, must start with http:// or https://",
            id="endpoint-url-without-scheme",
        ),
        pytest.param(
            "endpoints: [{name: vllm, base_url: 'http://[10.0.0.5]:8000/v1'}]",
            "endpoints.0.base_url: Value error, must name a host and port an HTTP client can connect to",
            id="endpoint-url-bracketing-no-ipv6-address",
        ),
        pytest.param(
            "endpoints: [{name: vllm, base_url: 'http://vllm:80000/v1'}]",
            "endpoints.0.base_url: Value error, must name a host and port an HTTP client can connect to (Port out",
            id="endpoint-url-port-out-of-range",
        ),
        pytest.param(one_model('"-0.1"'), "models.0.input_price", id="negative-price"),
        pytest.param(one_model('"a dime"'), "models.0.input_price", id="price-not-a-number"),
        pytest.param(one_model(".nan"), "models.0.input_price", id="nan-price"),
        pytest.param(
            "models: [{alias: chat, endpoint: nowhere, upstream_model: q}]",
            "model 'chat' names unknown endpoint 'nowhere'",
            id="model-with-unknown-endpoint",
        ),
        pytest.param(
            one_model('"0.1"', "tokenizer: llama"),
            "model 'chat' names unknown tokenizer 'llama'",
            id="model-with-unknown-tokenizer",
        ),
        pytest.param(
            "tokenizers: {mine: {kind: sentencepiece, path: /m}}", "tokenizers.mine", id="unknown-tokenizer-kind"
        ),
        pytest.param(
            "rate_limits: {redis_url: 'http://cache:6379'}",
            "rate_limits.redis_url: Value error, must be a redis://, rediss://",
            id="rate-limiter-not-redis",
        ),
        pytest.param("budgets: {refresh_seconds: 0}", "budgets.refresh_seconds", id="zero-budget-refresh"),
    ],
)
def test_an_invalid_file_is_refused_naming_the_key(tmp_path: Path, text: str, named: str) -> None:
    message = config_error(tmp_path, text)

    assert message.startswith("invalid configuration: ")
    assert named in message


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"CACHEGATE_LISTEN__PORT": "ninety"}, "listen.port"),
        ({"CACHEGATE_LISTEN__PROT": "9000"}, "listen.prot"),
        ({"CACHEGATE_ACCEPTED_TTLS": "1h"}, "accepted_ttls"),
        ({"CACHEGATE_ACCEPTED_TTLS": "5m,,1h"}, "accepted_ttls.1"),
    ],
)
def test_an_invalid_override_is_refused_naming_the_key(tmp_path: Path, environ: dict[str, str], named: str) -> None:
    assert named in config_error(tmp_path, "listen: {port: 8080}", environ)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    message = config_error(tmp_path, "listen: {port: 70000}\ndata_dirr: /srv\n")

    assert "listen.port" in message
    assert "data_dirr" in message


def test_a_file_that_is_not_yaml_is_refused(tmp_path: Path) -> None:
    message = config_error(tmp_path, "listen: {port: 8080\n")

    assert "is not valid YAML: line 2, column 1: expected ',' or '}'" in message
    assert "cachegate.yaml" in message
    assert "\n" not in message  # one line, whatever PyYAML quotes of the source


@pytest.mark.parametrize("text", ["- listen\n- models\n", "just a string\n", "8080\n"])
def test_a_file_without_a_mapping_at_the_top_is_refused(tmp_path: Path, text: str) -> None:
    assert "must hold a mapping at the top level" in config_error(tmp_path, text)


def test_a_missing_file_is_refused_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"

    with pytest.raises(ConfigError, match=f"cannot read config file {missing}: No such file or directory"):
        load_config(missing, {})


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cachegate.yaml"
    path.write_bytes(b"listen:\n  host: caf\xe9\n")  # Latin-1, as an old editor saves it

    with pytest.raises(ConfigError, match=r"cachegate\.yaml"):
        load_config(path, {})


def test_a_negative_cache_multiplier_is_refused(tmp_path: Path) -> None:
    text = one_model('"0.1"', 'cache: {read_multiplier: "-0.1"}')

    assert "models.0.cache.read_multiplier" in config_error(tmp_path, text)


def test_the_demo_needs_its_tokenizer(tmp_path: Path) -> None:
    text = "demo: {enabled: true}\ntokenizers: {mine: {kind: hf, path: /models/mine}}\n"

    assert "qwen3" in config_error(tmp_path, text)


# --- money stays decimal -----------------------------------------------------------------------


def test_prices_written_as_yaml_numbers_are_decimal_as_written(tmp_path: Path) -> None:
    config = load_yaml(tmp_path, one_model("0.1"))

    assert isinstance(config.models[0].input_price, Decimal)
    assert config.models[0].input_price == Decimal("0.1")  # not 0.1000000000000000055511151231257827…


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(price=st.decimals(min_value=0, max_value=1000, places=12, allow_nan=False, allow_infinity=False))
def test_prices_written_as_strings_are_kept_exactly(tmp_path: Path, price: Decimal) -> None:
    config = load_yaml(tmp_path, one_model(f'"{price}"'))

    loaded = config.models[0].input_price
    assert isinstance(loaded, Decimal)
    assert loaded == price


def test_duplicate_endpoint_names_are_refused(tmp_path: Path) -> None:
    text = """
endpoints:
  - {name: a, base_url: "http://x/v1"}
  - {name: a, base_url: "http://y/v1"}
"""
    assert "endpoint names must be unique: a appear" in config_error(tmp_path, text)


def test_duplicate_model_aliases_are_refused(tmp_path: Path) -> None:
    text = """
demo: {enabled: true}
models:
  - {alias: m, endpoint: demo, upstream_model: u}
  - {alias: m, endpoint: demo, upstream_model: v}
"""
    assert "model names must be unique: m appear" in config_error(tmp_path, text)


REPLICA_ENDPOINTS = """
cache_salt_secret: "a secret of sixteen characters or more"
endpoints:
  - {name: r1, base_url: "http://r1/v1"}
  - {name: r2, base_url: "http://r2/v1"}
  - {name: salted, base_url: "http://r3/v1", cache_salt: true}
"""


def test_a_model_may_list_several_endpoints_in_order(tmp_path: Path) -> None:
    config = load_yaml(tmp_path, REPLICA_ENDPOINTS + "models: [{alias: m, endpoints: [r2, r1], upstream_model: u}]")

    model = config.models[0].to_model()
    assert model.endpoints == ("r2", "r1") and model.endpoint == "r2"
    assert (config.routing.max_in_flight, config.routing.down_seconds) == (128, 5.0)


@pytest.mark.parametrize(
    ("model", "problem"),
    [
        ("{alias: m, endpoint: r1, endpoints: [r2], upstream_model: u}", "either endpoint or endpoints"),
        ("{alias: m, upstream_model: u}", "either endpoint or endpoints"),
        ("{alias: m, endpoints: [], upstream_model: u}", "either endpoint or endpoints"),
        ("{alias: m, endpoints: [r1, r1], upstream_model: u}", "endpoints must not name an endpoint twice"),
        ("{alias: m, endpoints: [r1, ghost], upstream_model: u}", "model 'm' names unknown endpoint 'ghost'"),
        ("{alias: m, endpoints: [r1, salted], upstream_model: u}", "must all set cache_salt, or none"),
    ],
)
def test_a_model_s_endpoint_list_is_checked(tmp_path: Path, model: str, problem: str) -> None:
    assert problem in config_error(tmp_path, REPLICA_ENDPOINTS + f"models: [{model}]")

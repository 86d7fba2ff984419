"""Configuration: one YAML file plus ``CACHEGATE_*`` environment overrides, validated at start.

Environment variables override file values; nested keys are joined with ``__``, e.g.
``CACHEGATE_LISTEN__PORT=9000`` or ``CACHEGATE_CACHE_INDEX_URL=postgresql://…``. List values
(``CACHEGATE_ACCEPTED_TTLS=5m,1h``) are comma-separated. A missing file means the embedded
default: SQLite under ``data_dir``, the shipped Qwen3 counter and the built-in fake upstream.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cachegate.core.chat_shape import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_MESSAGES,
    DEFAULT_MAX_PARTS,
    DEFAULT_MAX_TOOLS,
    RequestLimits,
)
from cachegate.core.errors import CachegateError
from cachegate.core.types import CacheTariff, TtlTier
from cachegate.store.base import Endpoint, Model
from cachegate.tokens.registry import TokenizerSpec
from cachegate.upstream.base import check_base_url

ENV_PREFIX = "CACHEGATE_"
CONFIG_PATH_ENV = "CACHEGATE_CONFIG"  # names the file itself; not an override


class ConfigError(CachegateError):
    """The configuration is invalid; the message says where and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Listen(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)


class Deadlines(_Strict):
    classify_seconds: float = Field(5.0, gt=0)
    commit_seconds: float = Field(30.0, gt=0)
    upstream_connect_seconds: float = Field(10.0, gt=0)
    upstream_read_seconds: float = Field(600.0, gt=0)
    # How long a response whose client left is still read, discarding, for the upstream's final usage;
    # then the upstream connection is closed and the completion is billed from what was relayed.
    disconnect_drain_seconds: float = Field(5.0, ge=0)


class ServerLimits(_Strict):
    """What one client may hold of the server: header bytes, time to send a request, connections, shutdown.

    Where uvicorn has the option it is used (``serving.py``); the rest is cachegate's own (``http_limits.py``).
    """

    max_header_bytes: int = Field(64 * 1024, ge=1024)  # request line + headers; over it: 431
    request_receive_seconds: float = Field(30.0, gt=0)  # a whole request (headers and body) must arrive in this
    keep_alive_seconds: float = Field(5.0, gt=0)  # an idle keep-alive connection is closed after this
    max_concurrency: int | None = Field(2048, gt=0)  # connections + requests in flight; over it: 503 (uvicorn)
    per_key_concurrency: int | None = Field(64, gt=0)  # requests in flight per API key; over it: 429
    shutdown_drain_seconds: float = Field(30.0, ge=0)  # open requests and streams may finish within this
    shutdown_ledger_seconds: float = Field(10.0, gt=0)  # then the ledger is flushed to the store within this
    shutdown_close_seconds: float = Field(5.0, gt=0)  # then each other part is stopped within this
    workers: int = Field(1, ge=1)  # gateway processes sharing the listening socket (workers.py); serve --workers


class AuthConfig(_Strict):
    """How API keys are resolved (SPEC §12): the key caches and the limit on failed attempts."""

    key_cache_seconds: float = Field(30.0, gt=0)  # a known key is looked up again after this
    key_cache_size: int = Field(100_000, gt=0)
    unknown_key_cache_seconds: float = Field(30.0, gt=0)  # an unknown key is refused from memory this long
    unknown_key_cache_size: int = Field(100_000, gt=0)  # its own cache: a flood of random keys evicts no real key
    failures_per_minute: int = Field(30, gt=0)  # 401s per client address; more: 429 without a lookup


class RoutingConfig(_Strict):
    """How a request picks one of its model's endpoints (SPEC §15): prefix affinity, with these fallbacks."""

    # An endpoint with more requests in flight (from this process) passes new ones to the next in
    # rendezvous order; None: never. Set it near the engine's batch size (vLLM's max_num_seqs).
    max_in_flight: int | None = Field(128, gt=0)
    # An endpoint that refused a connection is tried after every other for this long.
    down_seconds: float = Field(5.0, ge=0)


class EndpointConfig(_Strict):
    name: str
    base_url: str
    api_key: str | None = None
    # vLLM's per-request prefix-cache isolation: chat, completions and Responses requests to this
    # endpoint carry cache_salt = a secret-derived value per principal (needs cache_salt_secret).
    cache_salt: bool = False

    def to_endpoint(self) -> Endpoint:
        return Endpoint(self.name, self.base_url, self.api_key)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return check_base_url(value).rstrip("/")


class CacheTariffConfig(_Strict):
    write_multiplier_5m: Decimal = Field(Decimal("1.25"), ge=0, allow_inf_nan=False)
    write_multiplier_1h: Decimal = Field(Decimal("2.0"), ge=0, allow_inf_nan=False)
    write_multiplier_24h: Decimal = Field(Decimal("2.5"), ge=0, allow_inf_nan=False)
    read_multiplier: Decimal = Field(Decimal("0.1"), ge=0, allow_inf_nan=False)
    min_prefix_tokens: int = Field(1024, ge=0)

    def to_tariff(self) -> CacheTariff:
        return CacheTariff(
            write_multiplier_5m=str(self.write_multiplier_5m),
            write_multiplier_1h=str(self.write_multiplier_1h),
            write_multiplier_24h=str(self.write_multiplier_24h),
            read_multiplier=str(self.read_multiplier),
            min_prefix_tokens=self.min_prefix_tokens,
        )


class ModelConfig(_Strict):
    alias: str
    # One endpoint, or ``endpoints``: several replicas, spread by prefix affinity (SPEC §15).
    endpoint: str | None = None
    endpoints: tuple[str, ...] = ()
    upstream_model: str
    tokenizer: str = "qwen3"
    input_price: Decimal = Field(Decimal("0"), ge=0)
    output_price: Decimal = Field(Decimal("0"), ge=0)
    cache: CacheTariffConfig | None = None  # seeded into the store when the model has no tariff yet
    automatic_caching: TtlTier | None = None  # a request without markers is cached with this TTL (SPEC §3.1)

    @model_validator(mode="after")
    def _one_endpoint_list(self) -> ModelConfig:
        if (self.endpoint is None) == (not self.endpoints):
            raise ValueError("give either endpoint or endpoints (a non-empty list)")
        if len(set(self.endpoints)) != len(self.endpoints):
            raise ValueError("endpoints must not name an endpoint twice")
        return self

    @property
    def endpoint_names(self) -> tuple[str, ...]:
        return self.endpoints or (self.endpoint or "",)

    def to_model(self) -> Model:
        first, *more = self.endpoint_names
        return Model(
            self.alias,
            first,
            self.upstream_model,
            self.tokenizer,
            self.input_price,
            self.output_price,
            self.automatic_caching,
            tuple(more),
        )


class RequestLimitsConfig(_Strict):
    """How large a request body's structure may be (SPEC §11); past a limit, a 400 naming the field."""

    max_depth: int = Field(DEFAULT_MAX_DEPTH, ge=2, le=200)  # JSON nesting; 200 stays clear of orjson's 254
    max_messages: int = Field(DEFAULT_MAX_MESSAGES, gt=0)
    max_parts: int = Field(DEFAULT_MAX_PARTS, gt=0)  # content parts, and tool calls, of one message
    max_tools: int = Field(DEFAULT_MAX_TOOLS, gt=0)

    def to_limits(self) -> RequestLimits:
        return RequestLimits(self.max_depth, self.max_messages, self.max_parts, self.max_tools)


class Demo(_Strict):
    """The built-in fake upstream, started in process for demos (the default with no config file)."""

    enabled: bool = False
    port: int = Field(8081, ge=0, le=65535)


class LedgerJournalConfig(_Strict):
    """The local journal every ledger row is written to before its response ends (docs/ledger.md)."""

    enabled: bool = True
    path: Path | None = None  # default: <data_dir>/ledger-journal; one folder may serve many processes
    # True: a row is on disk (fdatasync) before its response ends; a crash loses nothing answered.
    # False: the OS writes it back when it likes; a host crash (not a process crash) may lose the
    # last seconds of rows. Rows of concurrent requests share one write and one fsync either way.
    fsync: bool = True
    # Under load, a group waits up to commit_delay_ms for more rows (fewer synced writes, less CPU
    # per request) when at least commit_siblings other requests in flight have not journaled their
    # row yet; a request alone is written at once. 0 ms: never wait; 0 siblings: always wait.
    commit_delay_ms: float = Field(2.0, ge=0, le=1000)
    commit_siblings: int = Field(5, ge=0)


class MetricsConfig(_Strict):
    # True: GET /metrics needs an admin key (Prometheus: authorization.credentials), 401 without a
    # key, 403 for a tenant's. False: open, for a port no tenant can reach.
    require_admin_key: bool = True


class LedgerConfig(_Strict):
    flush_interval_seconds: float = Field(1.0, gt=0)  # how often the journal is drained to the control store
    batch_size: int = Field(1000, gt=0)  # rows per insert
    # Rows held in memory: the buffer used only when the journal cannot be written, and, separately,
    # the copy of journaled rows that the drain sends to the store (beyond it, rows are read back).
    max_buffered_rows: int = Field(100_000, gt=0)
    journal: LedgerJournalConfig = LedgerJournalConfig()


class BudgetsConfig(_Strict):
    """Budgets (SPEC §13): how often each replica reloads every key's spend from the store. Another
    replica's spend is seen here within this plus ``ledger.flush_interval_seconds`` (docs/spec.md §13)."""

    refresh_seconds: float = Field(5.0, gt=0)


class RateLimitsConfig(_Strict):
    """Per-key rate limits (SPEC §13): in process, or shared by every replica through Redis."""

    # redis://, rediss://, redis+cluster:// or rediss+cluster://, its query may set key_prefix
    # (default cachegate:ratelimit); None: each replica limits on its own.
    redis_url: str | None = None
    # A check that takes longer goes through unchecked (fails open), as does every check for
    # retry_seconds after a failure, so a Redis outage costs requests neither errors nor waiting.
    redis_timeout_seconds: float = Field(0.25, gt=0)
    retry_seconds: float = Field(1.0, gt=0)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.lower().startswith(
            ("redis://", "rediss://", "redis+cluster://", "rediss+cluster://")
        ):
            raise ValueError("must be a redis://, rediss://, redis+cluster:// or rediss+cluster:// URL")
        return value


class Config(_Strict):
    listen: Listen = Listen()
    data_dir: Path = Path("data")
    control_store_url: str | None = None  # default: sqlite under data_dir
    cache_index_url: str | None = None  # default: sqlite under data_dir
    accepted_ttls: tuple[TtlTier, ...] = (TtlTier.FIVE_MINUTES, TtlTier.ONE_HOUR)
    body_limit_bytes: int = Field(32 * 1024 * 1024, gt=0)
    request_limits: RequestLimitsConfig = RequestLimitsConfig()
    deadlines: Deadlines = Deadlines()
    sweep_interval_seconds: float = Field(60.0, gt=0)
    # How long the index keeps expired entries and the trails of commits, so that a miss can be
    # diagnosed as expired or prefix_changed (SPEC §14); 0 forgets them at expiry.
    miss_retention_seconds: float = Field(3600.0, ge=0)
    catalog_refresh_seconds: float = Field(10.0, gt=0)  # also how soon another replica's revocation applies
    server: ServerLimits = ServerLimits()
    auth: AuthConfig = AuthConfig()
    tokenizers: dict[str, TokenizerSpec] = Field(
        default_factory=lambda: {"qwen3": TokenizerSpec.model_validate({"kind": "builtin", "name": "qwen3"})}
    )
    endpoints: tuple[EndpointConfig, ...] = ()
    models: tuple[ModelConfig, ...] = ()
    routing: RoutingConfig = RoutingConfig()
    demo: Demo = Demo()
    ledger: LedgerConfig = LedgerConfig()
    metrics: MetricsConfig = MetricsConfig()
    budgets: BudgetsConfig = BudgetsConfig()
    rate_limits: RateLimitsConfig = RateLimitsConfig()
    # The key of the per-principal cache salts (EndpointConfig.cache_salt): stable across replicas
    # and restarts, never sent anywhere; changing it starts every principal's engine cache afresh.
    cache_salt_secret: str | None = Field(None, min_length=16)

    @field_validator("accepted_ttls", mode="before")
    @classmethod
    def _split_ttls(cls, value: Any) -> Any:
        return [part.strip() for part in value.split(",")] if isinstance(value, str) else value

    @field_validator("accepted_ttls")
    @classmethod
    def _nonempty(cls, value: tuple[TtlTier, ...]) -> tuple[TtlTier, ...]:
        if not value:
            raise ValueError("at least one TTL must be accepted")
        if TtlTier.FIVE_MINUTES not in value:
            raise ValueError("5m must be accepted: it is the TTL of a marker without one")
        return value

    @model_validator(mode="after")
    def _references(self) -> Config:
        for kind, names in (("endpoint", [e.name for e in self.endpoints]), ("model", [m.alias for m in self.models])):
            duplicates = sorted({name for name in names if names.count(name) > 1})
            if duplicates:
                raise ValueError(f"{kind} names must be unique: {', '.join(duplicates)} appear more than once")
        salted = [e.name for e in self.endpoints if e.cache_salt]
        if salted and self.cache_salt_secret is None:
            raise ValueError(f"endpoints {', '.join(salted)} set cache_salt: cache_salt_secret is required")
        endpoints = {e.name for e in self.endpoints}
        models = list(self.models)
        if self.demo.enabled:
            endpoints.add(DEMO_MODEL.endpoint)
            models.append(DEMO_MODEL)
        salted_names = set(salted)
        for model in models:
            for name in model.endpoint_names:
                if name not in endpoints:
                    raise ValueError(f"model {model.alias!r} names unknown endpoint {name!r}")
            if len({name in salted_names for name in model.endpoint_names}) > 1:
                # One body goes to whichever replica answers (SPEC §15): they must agree on cache_salt.
                raise ValueError(f"the endpoints of model {model.alias!r} must all set cache_salt, or none")
            if model.tokenizer not in self.tokenizers:
                raise ValueError(f"model {model.alias!r} names unknown tokenizer {model.tokenizer!r}")
        return self

    @property
    def store_url(self) -> str:
        return self.control_store_url or f"sqlite:///{self.data_dir / 'control.db'}"

    @property
    def journal_dir(self) -> Path | None:
        journal = self.ledger.journal
        return (journal.path or self.data_dir / "ledger-journal") if journal.enabled else None

    @property
    def index_url(self) -> str:
        return self.cache_index_url or f"sqlite:///{self.data_dir / 'cache-index.db'}"


DEMO_MODEL = ModelConfig(
    alias="demo",
    endpoint="demo",
    upstream_model="qwen3-fake",
    tokenizer="qwen3",
    input_price=Decimal("0.000001"),
    output_price=Decimal("0.000002"),
    cache=CacheTariffConfig(),
)


def embedded_default() -> dict[str, Any]:
    """The configuration used when no file is given: everything local, the fake upstream as ``demo``."""
    return {"demo": {"enabled": True}}


def load_config(path: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (YAML), apply environment overrides, validate; raise ConfigError with every problem."""
    raw: dict[str, Any]
    if path is None:
        raw = embedded_default()
    else:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(exc)}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        raw = loaded
    _apply_env(raw, os.environ if environ is None else environ)
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from exc


def _apply_env(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_PATH_ENV:
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__") if part]
        if not path:
            continue
        node = raw
        for key in path[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = {}
                node[key] = child
            node = child
        node[path[-1]] = value


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's error on one line: what it found and where (its own text quotes the source over several)."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem:
        mark = error.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        return f"{where}{error.problem}"
    return " ".join(str(error).split())

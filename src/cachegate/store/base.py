"""The control store port: principals, API keys, endpoints, models, cache tariffs, usage ledger.

SQLite is the embedded default and PostgreSQL the production store; both run the same
migrations (store/migrations/) and pass the same test suite. The gateway reads the catalog
(endpoints, models, tariffs) into memory and resolves keys through a small cache, so a store
outage only affects keys it has never seen (SPEC §11).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Protocol, runtime_checkable

from cachegate.core.budgets import BudgetPeriod, BudgetSubject, KeyTotals
from cachegate.core.errors import CachegateError
from cachegate.core.types import CacheTariff, TtlTier


class StoreError(CachegateError):
    """Base of the control-store errors."""


class StoreUnavailable(StoreError):
    """The store could not be reached."""


class NotFound(StoreError):
    """The named principal, key, endpoint or model does not exist."""


class Conflict(StoreError):
    """The object exists already (e.g. a principal name)."""


@dataclass(frozen=True, slots=True)
class Principal:
    id: str
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str  # public, short; shown in listings and the ledger
    principal_id: str
    secret_hash: bytes  # sha256 of the secret; the secret itself is never stored
    is_admin: bool
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str
    base_url: str  # e.g. http://127.0.0.1:8000/v1
    api_key: str | None  # sent upstream instead of the client's key


@dataclass(frozen=True, slots=True)
class Model:
    alias: str  # what clients send as "model"
    endpoint: str  # Endpoint.name
    upstream_model: str  # what the upstream is sent as "model"
    tokenizer: str  # a token counter name from the config
    input_price: Decimal  # per token
    output_price: Decimal  # per token
    automatic_cache_ttl: TtlTier | None = None  # markerless requests cached with this TTL (§3.1); None: not
    more_endpoints: tuple[str, ...] = ()  # further replicas after ``endpoint``, in order (SPEC §15)

    @property
    def endpoints(self) -> tuple[str, ...]:
        """Every endpoint serving the model, the first one first; requests are spread by prefix affinity."""
        return (self.endpoint, *self.more_endpoints)

    def with_endpoints(self, endpoints: Sequence[str]) -> Model:
        """This model served by ``endpoints`` (at least one), in that order."""
        if not endpoints:
            raise ValueError("a model needs at least one endpoint")
        return replace(self, endpoint=endpoints[0], more_endpoints=tuple(endpoints[1:]))


@dataclass(frozen=True, slots=True)
class TariffVersion:
    model: str
    tariff: CacheTariff
    valid_from: datetime
    valid_until: datetime | None

    def in_force(self, at: datetime) -> bool:
        return self.valid_from <= at and (self.valid_until is None or at < self.valid_until)


@dataclass(frozen=True, slots=True)
class Budget:
    """A spend cap: what one key or principal may be billed (``cost``, SPEC §10) in one period."""

    subject: BudgetSubject
    subject_id: str  # ApiKey.id or Principal.id
    period: BudgetPeriod
    limit: Decimal  # in the currency of the prices


@dataclass(frozen=True, slots=True)
class RateLimit:
    """One key's rate limits; None leaves that limit off. Input tokens count as Anthropic's do:
    uncached input and cache writes count, cache reads do not."""

    key_id: str
    requests_per_minute: int | None = None
    input_tokens_per_minute: int | None = None


@dataclass(frozen=True, slots=True)
class Catalog:
    """Everything the gateway routes and prices by, loaded at once and refreshed periodically."""

    endpoints: dict[str, Endpoint]
    models: dict[str, Model]
    tariffs: dict[str, tuple[TariffVersion, ...]]  # model alias -> versions, oldest first
    revocations: int = 0  # how many keys are revoked: a change tells every replica to look its keys up again
    budgets: tuple[Budget, ...] = ()
    rate_limits: dict[str, RateLimit] = field(default_factory=dict)  # key id -> its limits

    def tariff_at(self, model: str, at: datetime) -> CacheTariff | None:
        for version in reversed(self.tariffs.get(model, ())):
            if version.in_force(at):
                return version.tariff
        return None


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """One request, as billed (SPEC §10)."""

    at: datetime
    principal_id: str
    key_id: str
    model: str
    status: int
    streaming: bool
    prompt_tokens: int
    completion_tokens: int
    cache_read_tokens: int
    cache_creation_5m_tokens: int
    cache_creation_1h_tokens: int
    cache_creation_24h_tokens: int
    upstream_cached_tokens: int | None
    cost: Decimal | None
    list_cost: Decimal | None
    latency_ms: float
    degraded: bool
    counted_prompt_tokens: int | None = None  # our count of the prompt, when it was rendered (drift = this - prompt)
    # Unique per request, given by the ledger writer: a row sent twice (a journal replayed after a
    # crash) is stored once. None only for rows written by hand; the store never dedupes those.
    row_id: str | None = None
    route: str = "chat"  # the route that served it: chat, messages, completions, responses, embeddings (SPEC §2)
    # The client left before the end (SPEC §11): "drained" (billed from the upstream's final usage,
    # read after it left) or "counted" (our count of the prompt, the completion tokens relayed).
    disconnect: str | None = None
    # Why the deepest breakpoint did not read (SPEC §14): one of MISS_REASONS (the header's value without
    # its block); None when it read, or caching was off for the request (or the index could not say why).
    miss_reason: str | None = None


MISS_REASONS: tuple[str, ...] = ("first_write", "expired", "prefix_changed", "below_floor", "degraded")
"""Every ``LedgerRow.miss_reason`` (SPEC §14), in the order reports list them."""


@dataclass(frozen=True, slots=True)
class UsageQuery:
    """Which ledger rows a usage query sums: ``since <= at < until`` (either open), one principal or all."""

    since: datetime | None = None
    until: datetime | None = None
    principal_id: str | None = None


class UsageFigures:
    """What a sum of ledger rows shows beyond its sums: one definition for a stored group and for
    any total of groups (the dashboard's), so a rate is never computed two ways."""

    __slots__ = ()
    prompt_tokens: int
    cache_read_tokens: int
    cache_write_5m_tokens: int
    cache_write_1h_tokens: int
    cache_write_24h_tokens: int
    cost: Decimal
    list_cost: Decimal

    @property
    def cache_write_tokens(self) -> int:
        return self.cache_write_5m_tokens + self.cache_write_1h_tokens + self.cache_write_24h_tokens

    @property
    def saving(self) -> Decimal:
        """What caching saved against the list price (SPEC §10)."""
        return self.list_cost - self.cost

    @property
    def hit_rate(self) -> float:
        """Cache reads over all prompt tokens (0 without prompt tokens)."""
        return self.cache_read_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


@dataclass(frozen=True, slots=True)
class UsageGroup(UsageFigures):
    """The ledger rows of one UTC day, API key and model, summed (SPEC §10, §13, §14).

    ``uncached_tokens`` is the prompt neither read from nor written to the cache; the three
    ``cache_write_*`` are the cache creation tokens per TTL. Count drift is our count of a prompt
    minus the upstream's ``prompt_tokens``, over the rows where we counted it.
    """

    day: str  # YYYY-MM-DD (UTC)
    principal_id: str
    key_id: str
    model: str
    requests: int
    prompt_tokens: int
    uncached_tokens: int
    cache_read_tokens: int
    cache_write_5m_tokens: int
    cache_write_1h_tokens: int
    cache_write_24h_tokens: int
    completion_tokens: int
    cost: Decimal
    list_cost: Decimal
    degraded: int
    misses: tuple[tuple[str, int], ...]  # (reason, count) for each of MISS_REASONS, in that order
    drift_sum: int
    drift_count: int


@runtime_checkable
class ControlStore(Protocol):
    async def migrate(self) -> None:
        """Bring the schema up to date (idempotent)."""

    # principals and keys
    async def create_principal(self, name: str) -> Principal: ...
    async def get_principal(self, name_or_id: str) -> Principal: ...
    async def list_principals(self) -> list[Principal]: ...
    async def create_api_key(self, principal_id: str, *, admin: bool = False) -> tuple[ApiKey, str]:
        """Returns the key and its secret; the secret is never retrievable again."""

    async def revoke_api_key(self, key_id: str) -> None: ...
    async def list_api_keys(self, principal_id: str | None = None) -> list[ApiKey]: ...
    async def find_api_key(self, secret_hash: bytes) -> ApiKey | None:
        """The key with this secret hash, revoked or not; None when there is none."""

    # endpoints, models, tariffs
    async def put_endpoint(self, endpoint: Endpoint) -> None: ...
    async def put_model(self, model: Model) -> None: ...
    async def set_cache_tariff(self, model: str, tariff: CacheTariff, at: datetime | None = None) -> TariffVersion:
        """Close the version in force (if any) and open a new one from ``at`` (default now)."""

    async def disable_cache_tariff(self, model: str, at: datetime | None = None) -> bool:
        """Close the version in force; returns whether there was one."""

    async def load_catalog(self) -> Catalog: ...

    # budgets and rate limits
    async def put_budget(self, budget: Budget) -> None:
        """Set (or replace) the budget of this subject and period; NotFound for an unknown subject."""

    async def delete_budget(self, subject: BudgetSubject, subject_id: str, period: BudgetPeriod) -> bool:
        """Remove the budget; returns whether there was one."""

    async def put_rate_limit(self, limit: RateLimit) -> None:
        """Set (or replace) a key's rate limits; NotFound for an unknown key."""

    async def delete_rate_limit(self, key_id: str) -> bool:
        """Remove a key's rate limits; returns whether it had any."""

    # usage ledger
    async def append_ledger(self, rows: Sequence[LedgerRow]) -> None:
        """Insert the rows in one transaction; a row whose ``row_id`` is stored already is skipped."""

    async def usage(self, query: UsageQuery) -> list[UsageGroup]:
        """The ledger summed by UTC day, key and model, in that order (then principal)."""

    async def spend_totals(self, at: datetime) -> list[KeyTotals]:
        """Each key's billed cost (ledger ``cost``) in the UTC day and month of ``at`` and in all
        time (SPEC §13). Read from running totals the ledger's writes keep, one row per key and
        window, so it costs a few rows per key however long the ledger grows."""

    async def aclose(self) -> None: ...

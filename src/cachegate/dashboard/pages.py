"""The dashboard's pages (SPEC §13): overview, a principal, a model; login and logout.

Server-rendered HTML from the package's jinja templates, charts as inline SVG (``charts.py``), the
style inline: the pages load nothing from anywhere else and work offline, with scripts off. Each
page reads the usage of its window (``?days=N``, the last 30 UTC days by default) from the store
and turns it into figures with ``figures.py``; the routes here only fetch, check and render.
The gateway hands the admin application every path under ``/admin`` without its trailing
slash, so the overview is ``/admin`` (``/admin/`` arrives as that).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Final
from urllib.parse import parse_qsl

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from cachegate.dashboard import figures, session
from cachegate.dashboard.charts import Series, line_chart
from cachegate.dashboard.figures import Totals
from cachegate.gateway.auth import KeyResolver
from cachegate.store.base import Budget, BudgetSubject, ControlStore, NotFound, StoreUnavailable, UsageGroup, UsageQuery
from cachegate.store.values import decimal_text

PREFIX: Final = "/admin"
DEFAULT_DAYS: Final = 30
MAX_DAYS: Final = 366
_LOGIN_BODY_LIMIT: Final = 8192  # a key and a few bytes of form encoding


def money(value: Decimal) -> str:
    """Exact, positional: what the ledger holds (SPEC §10), never a float's rounding."""
    return decimal_text(value)


def percent(rate: float) -> str:
    return f"{rate * 100:.1f} %"


def tokens(count: int) -> str:
    return f"{count:,}"


def drift(totals: Totals) -> str:
    mean = totals.mean_drift
    return "–" if mean is None else f"{mean:+.2f}"


def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("cachegate.dashboard", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    environment.filters.update(money=money, percent=percent, tokens=tokens, drift=drift)
    environment.globals["prefix"] = PREFIX
    return environment


class PageError(Exception):
    """A page that cannot be shown: answered with its status and a line of text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Window:
    days: int
    first: date
    last: date

    @property
    def since(self) -> datetime:
        return datetime(self.first.year, self.first.month, self.first.day, tzinfo=UTC)

    @property
    def day_list(self) -> list[str]:
        return figures.days_between(self.first, self.last)


def window_of(request: Request, now: datetime) -> Window:
    pairs = parse_qsl(request.url.query, keep_blank_values=True)
    unknown = [name for name, _ in pairs if name != "days"]
    if unknown or len(pairs) > 1:
        raise PageError(400, "the only parameter is days, once")
    text = pairs[0][1] if pairs else str(DEFAULT_DAYS)
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_DAYS:
        raise PageError(400, f"days must be a whole number from 1 to {MAX_DAYS}")
    last = now.date()
    return Window(int(text), last - timedelta(days=int(text) - 1), last)


class Dashboard:
    """The pages, built with the parts they read: the store, and the key resolver for the login."""

    def __init__(self, store: ControlStore, keys: KeyResolver, clock: Callable[[], datetime] | None = None) -> None:
        self._store = store
        self._keys = keys
        self._clock = clock or (lambda: datetime.now(UTC))
        self._templates = _environment()

    @property
    def routes(self) -> list[Route]:
        return [
            Route(PREFIX, self.overview, methods=["GET"], name="dashboard_overview"),
            Route(f"{PREFIX}/login", self.login_form, methods=["GET"], name="dashboard_login"),
            Route(f"{PREFIX}/login", self.login, methods=["POST"], name="dashboard_login_submit"),
            Route(f"{PREFIX}/logout", self.logout, methods=["POST"], name="dashboard_logout"),
            Route(f"{PREFIX}/principals/{{principal}}", self.principal, methods=["GET"], name="dashboard_principal"),
            Route(f"{PREFIX}/models/{{model:path}}", self.model, methods=["GET"], name="dashboard_model"),
        ]

    def _render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = self._templates.get_template(template).render(**context)
        return HTMLResponse(html, status, headers=_PAGE_HEADERS)

    # login

    async def login_form(self, request: Request) -> Response:
        return self._render("login.html", message="")

    async def login(self, request: Request) -> Response:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > _LOGIN_BODY_LIMIT:
                return self._render("login.html", 413, message="The form is too large.")
        secret = dict(parse_qsl(body.decode("utf-8", "replace"))).get("key", "").strip()
        checked = await session.check_key(self._keys, secret, session.client_address(request))
        if checked.refused is not None:
            return self._render("login.html", checked.refused.status, message=checked.message)
        response = RedirectResponse(f"{PREFIX}/", status_code=303)
        session.keep_key(response, secret, request)
        return response

    async def logout(self, request: Request) -> Response:
        response = RedirectResponse(f"{PREFIX}/login", status_code=303)
        session.forget_key(response, request)
        return response

    # pages

    async def overview(self, request: Request) -> Response:
        return await self._page(request, self._overview)

    async def principal(self, request: Request) -> Response:
        return await self._page(request, self._principal)

    async def model(self, request: Request) -> Response:
        return await self._page(request, self._model)

    async def _page(self, request: Request, build: Callable[[Request, Window], Awaitable[Response]]) -> Response:
        checked = await session.logged_in(self._keys, request)
        if checked.refused is not None:
            if checked.refused is session.Refused.NO_KEY:
                return RedirectResponse(f"{PREFIX}/login", status_code=303)
            response = self._render("login.html", checked.refused.status, message=checked.message)
            session.forget_key(response, request)
            return response
        try:
            return await build(request, window_of(request, self._clock()))
        except PageError as exc:
            return self._render("error.html", exc.status, message=exc.message)
        except StoreUnavailable:
            return self._render("error.html", 503, message="The control store is unavailable; try again shortly.")

    async def _overview(self, request: Request, window: Window) -> Response:
        groups = await self._store.usage(UsageQuery(since=window.since))
        names = await self._principal_names()
        budgets = (await self._store.load_catalog()).budgets
        return self._render(
            "usage.html",
            **await self._figures(window, groups, names, budgets, title="Overview"),
            principals=_named(figures.by(groups, _principal_of), names),
            models=list(figures.by(groups, _model_of).items()),
            keys=[],
        )

    async def _principal(self, request: Request, window: Window) -> Response:
        try:
            principal = await self._store.get_principal(request.path_params["principal"])
        except NotFound:
            raise PageError(404, "no such principal") from None
        groups = await self._store.usage(UsageQuery(since=window.since, principal_id=principal.id))
        names = {principal.id: principal.name}
        key_ids = {key.id for key in await self._store.list_api_keys(principal.id)}
        budgets = [
            b
            for b in (await self._store.load_catalog()).budgets
            if (b.subject is BudgetSubject.PRINCIPAL and b.subject_id == principal.id)
            or (b.subject is BudgetSubject.KEY and b.subject_id in key_ids)
        ]
        return self._render(
            "usage.html",
            **await self._figures(
                window, groups, names, budgets, title=f"Principal {principal.name}", principal_id=principal.id
            ),
            principals=[],
            models=list(figures.by(groups, _model_of).items()),
            keys=list(figures.by(groups, _key_of).items()),
        )

    async def _model(self, request: Request, window: Window) -> Response:
        alias = request.path_params["model"]
        groups = [g for g in await self._store.usage(UsageQuery(since=window.since)) if g.model == alias]
        catalog = await self._store.load_catalog()
        if not groups and alias not in catalog.models:
            raise PageError(404, "no such model")
        names = await self._principal_names()
        return self._render(
            "usage.html",
            **await self._figures(window, groups, names, [], title=f"Model {alias}"),
            principals=_named(figures.by(groups, _principal_of), names),
            models=[],
            keys=[],
        )

    async def _principal_names(self) -> dict[str, str]:
        return {p.id: p.name for p in await self._store.list_principals()}

    async def _figures(
        self,
        window: Window,
        groups: Sequence[UsageGroup],
        names: dict[str, str],
        budgets: Sequence[Budget],
        *,
        title: str,
        principal_id: str | None = None,
    ) -> dict[str, Any]:
        """What every usage page shows: totals, the charts and table per day, misses, budgets."""
        days = figures.per_day(groups, window.day_list)
        now = self._clock()
        budget_uses: list[figures.BudgetUse] = []
        if budgets:
            start = figures.earliest_window_start(budgets, now)
            since = None if start is None else datetime.fromisoformat(start).replace(tzinfo=UTC)
            spent_groups = await self._store.usage(UsageQuery(since=since, principal_id=principal_id))
            budget_uses = figures.budgets_in_use(budgets, spent_groups, now, names)
        day_names = [day for day, _ in days]
        totals = figures.total(groups)
        return {
            "title": title,
            "window": window,
            "totals": totals,
            "days": days,
            "misses": totals.top_misses(),
            "budgets": budget_uses,
            "charts": {
                "hit_rate": line_chart(
                    "chart-hit-rate", day_names, [Series("hit rate", [t.hit_rate for _, t in days])], percent
                ),
                "tokens": line_chart(
                    "chart-tokens",
                    day_names,
                    [
                        Series("read", [t.cache_read_tokens for _, t in days]),
                        Series("written", [t.cache_write_tokens for _, t in days]),
                    ],
                    lambda value: tokens(round(value)),
                ),
                "spend": line_chart(
                    "chart-spend",
                    day_names,
                    [
                        Series("cost", [float(t.cost) for _, t in days]),
                        Series("list cost", [float(t.list_cost) for _, t in days]),
                        Series("saving", [float(t.saving) for _, t in days]),
                    ],
                    _money_axis,
                ),
            },
        }


def _named(by_principal: dict[str, Totals], names: dict[str, str]) -> list[tuple[str, str, Totals]]:
    """(id, name, totals) per principal, by name."""
    return sorted(((pid, names.get(pid, pid), t) for pid, t in by_principal.items()), key=lambda item: item[1])


def _money_axis(value: float) -> str:
    return f"{value:.4g}"


def _principal_of(group: UsageGroup) -> str:
    return group.principal_id


def _model_of(group: UsageGroup) -> str:
    return group.model


def _key_of(group: UsageGroup) -> str:
    return group.key_id


# No script, no frame, nothing from elsewhere: the pages need none of it (SPEC §12).
_PAGE_HEADERS: Final = {
    "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self';"
    " frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}

"""``cache_control`` markers (SPEC §3): their grammar, the breakpoints they make, their removal.

Decisions where the SPEC is silent:
- Keys of a marker other than ``type`` and ``ttl`` are ignored (clients and SDKs add fields we
  have no use for; rejecting them would break those clients for nothing). ``"ttl": null`` means
  the default TTL, as an absent ``ttl`` does.
- A message-level marker and a marker on that message's last block name the same breakpoint: with
  the same TTL they make one breakpoint (one slot), with different TTLs the request is rejected
  (``ttl_conflict``).
- The TTL order rule (§3.3) covers the automatic breakpoint too: a top-level ``1h`` after an
  explicit ``5m`` is rejected (``ttl_order``, param ``cache_control``).
- Errors are reported in request order: the top-level marker's grammar first, then each block's
  markers in block order (its own marker before its message's), then the automatic placement.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from cachegate.core.errors import MarkerError
from cachegate.core.sites import (
    MARKER_KEY,
    Site,
    iter_sites,
    marker_param,
    message_marker_param,
)
from cachegate.core.types import BlockKind, Breakpoint, TtlTier

MAX_BREAKPOINTS: Final = 4
_TTLS: Final = {tier.value: tier for tier in TtlTier}
_SHOWN_CHARS: Final = 40


@dataclass(frozen=True)
class TtlPolicy:
    """The TTLs a deployment accepts (§3.2) and the one an unspecified ``ttl`` means."""

    accepted: frozenset[TtlTier]
    default: TtlTier = TtlTier.FIVE_MINUTES

    def __post_init__(self) -> None:
        if self.default not in self.accepted:
            raise ValueError(f"default ttl {self.default.value} is not among the accepted ttls")

    @classmethod
    def default_policy(cls) -> TtlPolicy:
        """``5m`` and ``1h``; ``24h`` is opt-in."""
        return cls(frozenset({TtlTier.FIVE_MINUTES, TtlTier.ONE_HOUR}))

    def describe(self) -> str:
        return ", ".join(tier.value for tier in sorted(self.accepted, key=lambda tier: tier.rank))


def parse_marker(value: object, policy: TtlPolicy, param: str) -> TtlTier | None:
    """The TTL a marker asks for; None when there is no marker (absent or ``null``)."""
    return None if value is None else _parse_present(value, policy, param)


def _parse_present(value: object, policy: TtlPolicy, param: str) -> TtlTier:
    if not isinstance(value, dict):
        raise MarkerError(
            f'{MARKER_KEY} must be an object like {{"type": "ephemeral"}}, got {_show(value)}',
            param=param,
            reason="malformed",
        )
    kind = value.get("type")
    if not isinstance(kind, str):
        raise MarkerError(
            f'{MARKER_KEY}.type is required and must be the string "ephemeral"',
            param=param,
            reason="malformed",
        )
    if kind != "ephemeral":
        raise MarkerError(
            f'unsupported {MARKER_KEY}.type {_show(kind)}; the only supported type is "ephemeral"',
            param=param,
            reason="unsupported_type",
        )
    ttl = value.get("ttl")
    if ttl is None:
        return policy.default
    if not isinstance(ttl, str):
        raise MarkerError(f"{MARKER_KEY}.ttl must be a string", param=param, reason="malformed")
    tier = _TTLS.get(ttl)
    if tier is None:
        raise MarkerError(
            f"invalid {MARKER_KEY}.ttl {_show(ttl)}; expected one of {', '.join(_TTLS)}",
            param=param,
            reason="invalid_ttl",
        )
    if tier not in policy.accepted:
        raise MarkerError(
            f"{MARKER_KEY}.ttl {ttl!r} is not available; available ttls: {policy.describe()}",
            param=param,
            reason="ttl_not_accepted",
        )
    return tier


def validate_markers(body: Mapping[str, Any], policy: TtlPolicy) -> tuple[Breakpoint, ...]:
    """Check every marker of ``body`` (SPEC §3); the breakpoints they make.

    Raises ``MarkerError`` exactly as ``blocks.parse_prompt`` does: both use ``find_breakpoints``.
    """
    return find_breakpoints(body, iter_sites(body), policy)


def find_breakpoints(body: Mapping[str, Any], sites: Iterable[Site], policy: TtlPolicy) -> tuple[Breakpoint, ...]:
    """The breakpoints of ``body``, in block order, given its ``sites`` (``sites.iter_sites``)."""
    automatic = parse_marker(body.get(MARKER_KEY), policy, MARKER_KEY)
    breakpoints: list[Breakpoint] = []
    block = -1  # after the loop: the last block, -1 when there are none
    for block, (kind, message, index, value, owner, _, last) in enumerate(sites):
        own = value.get(MARKER_KEY) if isinstance(value, dict) else None
        inherited = owner.get(MARKER_KEY) if last and isinstance(owner, dict) else None
        if own is None and inherited is None:
            continue
        ttl, param = _block_ttl(own, inherited, policy, kind, message, index)
        if len(breakpoints) >= MAX_BREAKPOINTS:
            raise MarkerError(
                f"too many {MARKER_KEY} breakpoints: at most {MAX_BREAKPOINTS} per request, the automatic one included",
                param=param,
                reason="too_many_breakpoints",
            )
        _check_order(breakpoints, ttl, param)
        breakpoints.append(Breakpoint(block, ttl))
    if automatic is not None and block >= 0:
        _place_automatic(breakpoints, block, automatic)
    return tuple(breakpoints)


def _block_ttl(
    own: object,
    inherited: object,
    policy: TtlPolicy,
    kind: BlockKind,
    message: int | None,
    index: int | None,
) -> tuple[TtlTier, str]:
    """The TTL of a marked block and the path to report it by.

    ``own`` is the block's marker, ``inherited`` its message's (on the message's last block);
    at least one is not None.
    """
    param = marker_param(kind, message, index)
    if inherited is None:
        return _parse_present(own, policy, param), param
    message_param = message_marker_param(message)
    if own is None:
        return _parse_present(inherited, policy, message_param), message_param
    ttl = _parse_present(own, policy, param)
    message_ttl = _parse_present(inherited, policy, message_param)
    if ttl is not message_ttl:
        raise MarkerError(
            f"{message_param} asks for ttl {message_ttl.value} but the message's last block is "
            f"already marked with ttl {ttl.value}",
            param=message_param,
            reason="ttl_conflict",
        )
    return ttl, param


def _place_automatic(breakpoints: list[Breakpoint], last_block: int, ttl: TtlTier) -> None:
    """Automatic caching (§3.1): a breakpoint on the request's last block, unless it has one."""
    if breakpoints and breakpoints[-1].block == last_block:
        if breakpoints[-1].ttl is not ttl:
            raise MarkerError(
                f"automatic {MARKER_KEY} asks for ttl {ttl.value} but the last block is already "
                f"marked with ttl {breakpoints[-1].ttl.value}",
                param=MARKER_KEY,
                reason="automatic_ttl_conflict",
            )
        return
    if len(breakpoints) >= MAX_BREAKPOINTS:
        raise MarkerError(
            f"no slot left for automatic {MARKER_KEY}: the request already has {MAX_BREAKPOINTS} "
            "breakpoints and its last block is not one of them",
            param=MARKER_KEY,
            reason="automatic_no_slot",
        )
    _check_order(breakpoints, ttl, MARKER_KEY)
    breakpoints.append(Breakpoint(last_block, ttl, automatic=True))


def _check_order(breakpoints: list[Breakpoint], ttl: TtlTier, param: str) -> None:
    """§3.3: a breakpoint may not ask for a longer TTL than the one before it."""
    if breakpoints and ttl.rank > breakpoints[-1].ttl.rank:
        raise MarkerError(
            f"{MARKER_KEY} ttl {ttl.value} comes after a breakpoint with the shorter ttl "
            f"{breakpoints[-1].ttl.value}; a longer ttl must come before a shorter one",
            param=param,
            reason="ttl_order",
        )


_RETENTION_DEFAULTS: Final = frozenset({"in_memory", "in-memory"})  # OpenAI's spelling, and its SDKs' older one


def automatic_marker(body: dict[str, Any], model_ttl: TtlTier, policy: TtlPolicy) -> bool:
    """Automatic caching per model (§3.1): a request with no marker at all gets a top-level one.

    Its TTL is the model's, or 24h when the request asks OpenAI's ``prompt_cache_retention:
    "24h"`` and the deployment accepts 24h. Returns whether a marker was added; a request with any
    marker (a ``null`` one included) keeps exactly what it asked for. Raises ``ValueError`` for a
    ``prompt_cache_retention`` OpenAI would refuse.
    """
    retention = body.get("prompt_cache_retention")
    if retention == "24h":
        ttl = TtlTier.ONE_DAY if TtlTier.ONE_DAY in policy.accepted else model_ttl
    elif retention is None or retention in _RETENTION_DEFAULTS:
        ttl = model_ttl
    else:
        raise ValueError(f'prompt_cache_retention must be "in_memory" or "24h", got {_show(retention)}')
    if MARKER_KEY in body:
        return False
    for _, _, _, value, owner, _, last in iter_sites(body):
        if (isinstance(value, dict) and MARKER_KEY in value) or (
            last and isinstance(owner, dict) and MARKER_KEY in owner
        ):
            return False
    body[MARKER_KEY] = {"type": "ephemeral", "ttl": ttl.value}
    return True


def strip_markers(body: dict[str, Any]) -> int:
    """Remove, in place, every marker of §3.1 (``null`` ones too) and nothing else.

    A ``cache_control`` anywhere else — a property of a tool's JSON schema, say — is user data
    and survives. Returns how many were removed (0: none).
    """
    removed = int(body.pop(MARKER_KEY, _ABSENT) is not _ABSENT)
    for _, _, _, value, owner, _, last in iter_sites(body):
        if isinstance(value, dict) and MARKER_KEY in value:
            del value[MARKER_KEY]
            removed += 1
        if last and isinstance(owner, dict) and MARKER_KEY in owner:
            del owner[MARKER_KEY]
            removed += 1
    return removed


_ABSENT: Final = object()


def _show(value: object) -> str:
    """A client value, shortened: it goes back to the client in a 400, and may reach a log."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else f"{text[: _SHOWN_CHARS - 3]}..."

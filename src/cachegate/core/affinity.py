"""Which of a model's endpoints a request goes to (SPEC §15): prefix affinity by rendezvous hashing.

An engine's prefix cache (vLLM's automatic prefix caching, SGLang's radix cache) lives in one
replica's memory. With several replicas, a prompt whose prefix the gateway bills as a read is
only read by the engine if it lands on the replica that computed that prefix before.

The key. A growing conversation's deepest cache entry changes every turn: turn t reads the entry
turn t−1 wrote and writes a deeper one, which turn t+1 reads. Hashing that entry would send each
turn to another replica than the one holding what it reads. What every turn of a conversation
has in common is its opening: the tools, the system prompt and the first message after them. And
what conversations that share a marked system prompt have in common is that prompt: the second
conversation of an agent reads the system prompt the first one wrote. So the key is the
request's principal and model (two principals' equal prompts are routed independently, SPEC §12)
and the prefix hash at the end of its *routing prefix*: its opening, or up to its first
breakpoint if that comes earlier (``core.blocks.prefix_hash_through``). Every entry a request
reads lies at or past the routing prefix of the request that wrote it, and contains that prefix,
so it was written, and computed, on the replica the same key picks now. Requests without markers
are keyed by their opening: the engine caches them just the same.

The order. Rendezvous (highest random weight) hashing ranks every endpoint by a hash of (key,
endpoint name): each key has its own stable order, keys spread evenly, and removing an endpoint
moves only the keys it was first for — each to its own next, not all to one neighbour. The
shell tries the endpoints in that order, moving those that are down or overloaded to the back
(``preference``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Final

from cachegate.core.blocks import prefix_hash_through

_SETTING_ROLES: Final = frozenset({"system", "developer"})
"""Roles that set the conversation up rather than open it."""


def opening_message(body: Mapping[str, Any]) -> int | None:
    """The index of the message that opens the conversation: the first that is not a system or
    developer message, else the last message; None when there are no messages."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    for position, message in enumerate(messages):
        if not (isinstance(message, dict) and message.get("role") in _SETTING_ROLES):
            return position
    return len(messages) - 1


def affinity_key(principal: str, model: str, body: Mapping[str, Any], first_breakpoint: int | None = None) -> bytes:
    """The routing key of a chat request: its principal, its model and the prefix hash of its routing prefix,
    the end of its opening or its first breakpoint (a block index), whichever comes first."""
    opening = opening_message(body)
    routing = prefix_hash_through(body, opening, first_breakpoint) if opening is not None else None
    return tenant_key(principal, model) + (routing or b"")


def tenant_key(principal: str, model: str) -> bytes:
    """The routing key of a request that has no prompt blocks (the other routes): its principal and model."""
    # Length-prefixed, so no two (principal, model) pairs encode alike.
    parts = [principal.encode(), model.encode()]
    return b"".join(len(part).to_bytes(4, "big") + part for part in parts)


def rendezvous_order(key: bytes, endpoints: Sequence[str]) -> list[str]:
    """``endpoints`` ranked for ``key``, best first: by a 64-bit hash of (key, name), highest first
    (ties, which need a hash collision, broken by name)."""
    secret = hashlib.sha256(key).digest()  # blake2b takes keys of at most 64 bytes
    return sorted(endpoints, key=lambda name: (-_weight(secret, name), name))


def _weight(secret: bytes, endpoint: str) -> int:
    return int.from_bytes(hashlib.blake2b(endpoint.encode(), digest_size=8, key=secret).digest(), "big")


def preference(
    ranked: Sequence[str],
    in_flight: Mapping[str, int],
    max_in_flight: int | None,
    down: Collection[str],
) -> list[str]:
    """The order to try ``ranked`` (a rendezvous order) in: first those that are up and have at
    most ``max_in_flight`` requests in flight, then the overloaded ones, then those that are down;
    each group keeps the rendezvous order, so a key spills over to the same next endpoint every
    time, and if every endpoint is overloaded the request stays with its own."""
    up = [name for name in ranked if name not in down]
    overloaded = set()
    if max_in_flight is not None:
        overloaded = {name for name in up if in_flight.get(name, 0) > max_in_flight}
    return (
        [name for name in up if name not in overloaded]
        + [name for name in up if name in overloaded]
        + [name for name in ranked if name in down]
    )

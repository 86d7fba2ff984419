"""A token counter answered by a tokenizer service over HTTP (SPEC §5), e.g. ``cachegate tokenizer serve``.

The service renders the request with the model's chat template just as the in-process counter
does, so the counts are the same. It splits the request into blocks itself, with the same
``parse_prompt``: the block indexes the gateway asks for are sent with the gateway's prefix hash
after each, and a service whose split differs (another cachegate version) refuses instead of
counting other blocks. The service must therefore run the same cachegate version as the
gateways it serves, at least the same block layout (SPEC §4) and counting rules.

Every failure — the service down, slow past the timeout, refusing the request, answering
something malformed — is a ``TokenCountError``, on which the gateway degrades (SPEC §11).

The service is no start-up dependency of the gateway: ``connect_in_background()`` asks it for the
model's ``tokenizer_version`` again and again, with backoff, until it answers; until then the
version is unknown (``CounterNotReady``) and the model's requests are served degraded. A service
that comes back counting with another version (a new tokenizer deployed while it was away, or
at any time) is believed from then on: the request that learns it is degraded, later ones build
their cache scope from the new version (SPEC §5: a fresh cache, never a mispriced one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import aiohttp
import orjson
from pydantic import BaseModel, ValidationError

from cachegate.core.types import ParsedPrompt
from cachegate.tokens.base import CounterNotReady, PromptCounts, TokenCountError, TokenizerLoadError
from cachegate.tokens.wire import ModelsAnswer, RenderAnswer

_JSON_HEADERS = {"content-type": "application/json"}
_CODE_LIMIT = 64  # an error code from the service goes into the gateway's log: keep it short

_Answer = TypeVar("_Answer", bound=BaseModel)

log = logging.getLogger(__name__)


class RemoteTokenCounter:
    """A ``TokenCounter`` for ``model`` as the tokenizer service at ``base_url`` serves it.

    ``await open()`` before use: it learns the model's ``tokenizer_version`` (part of the cache
    scope), and fails with ``TokenizerLoadError`` when the service is unreachable or does not
    serve the model; ``connect_in_background()`` then keeps trying. ``timeout`` bounds each
    HTTP exchange, connection included. Connections are pooled in one session, made on the
    running loop the first time it is needed; ``aclose()`` closes it and stops the retries.
    """

    def __init__(self, base_url: str, model: str, *, timeout: float = 5.0) -> None:
        self._base_url = base_url.rstrip("/")
        self._model = model
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._version: str | None = None
        self._connecting: asyncio.Task[None] | None = None
        self.last_error: str | None = None
        """Why the version is not known yet (None once it is): for logs and ``/readyz``."""

    @property
    def tokenizer_version(self) -> str:
        if self._version is None:
            raise CounterNotReady(f"tokenizer service {self._base_url} not reached yet for model {self._model!r}")
        return self._version

    @property
    def ready(self) -> bool:
        return self._version is not None

    @property
    def template_variables(self) -> frozenset[str]:
        """Unknown: the service does not say which switches its templates read."""
        return frozenset()

    async def open(self) -> None:
        try:
            answer = await self._exchange("GET", "/v1/models", None, ModelsAnswer)
        except TokenCountError as exc:
            raise TokenizerLoadError(f"tokenizer service {self._base_url}: {exc}") from exc
        versions = {served.alias: served.tokenizer_version for served in answer.models}
        if self._model not in versions:
            serves = ", ".join(sorted(versions)) or "nothing"
            raise TokenizerLoadError(
                f"tokenizer service {self._base_url} does not serve model {self._model!r} (it serves: {serves})"
            )
        self._version, self.last_error = versions[self._model], None

    def connect_in_background(self, min_backoff: float = 0.25, max_backoff: float = 5.0) -> None:
        """Retry ``open()`` on the running loop, with backoff, until it succeeds or ``aclose()``."""
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.get_running_loop().create_task(
                self._connect(min_backoff, max_backoff), name=f"cachegate-tokenizer-{self._model}"
            )

    async def _connect(self, min_backoff: float, max_backoff: float) -> None:
        delay = min_backoff
        while True:
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            try:
                await self.open()
            except TokenizerLoadError as exc:
                self.last_error = str(exc)
                delay = min(delay * 2, max_backoff)
                continue
            log.info("tokenizer service %s answers for model %r: counting resumes", self._base_url, self._model)
            return

    async def count(self, body: Mapping[str, Any], prompt: ParsedPrompt, blocks: Sequence[int]) -> PromptCounts:
        version = self.tokenizer_version
        if any(not 0 <= block < len(prompt.prefix_hashes) for block in blocks):
            raise TokenCountError("an asked-for block is not in the prompt")
        asked = [{"block": block, "prefix_hash": prompt.prefix_hashes[block].hex()} for block in blocks]
        try:
            payload = orjson.dumps({"virtual_model": self._model, "request": body, "blocks": asked})
        except TypeError as exc:
            raise TokenCountError(f"the request cannot be sent as JSON: {exc}") from exc
        answer = await self._exchange("POST", "/v1/render", payload, RenderAnswer)
        if answer.tokenizer_version != version:
            # Counts of another tokenizer would be filed under this request's cache scope: degrade this
            # one, and build later requests' scopes from the new version (a fresh cache).
            if self._version == version:
                self._version = answer.tokenizer_version
                log.warning("tokenizer service now counts model %r with another tokenizer version", self._model)
            raise TokenCountError(
                f"the tokenizer service now counts model {self._model!r} with another tokenizer version"
            )
        counted = {item.block: item.cumulative for item in answer.breakpoints}
        dropped = frozenset(answer.dropped) & set(blocks)
        missing = [block for block in blocks if block not in counted and block not in dropped]
        if missing:
            raise TokenCountError(f"the tokenizer service left out blocks {missing}")
        return PromptCounts(
            cumulative={block: counted[block] for block in blocks if block not in dropped},
            total=answer.total,
            dropped=dropped,
            method="remote",
            tokenizer_version=version,
        )

    async def aclose(self) -> None:
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await connecting
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def _exchange(self, method: str, path: str, payload: bytes | None, answer_type: type[_Answer]) -> _Answer:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=_JSON_HEADERS)
        try:
            async with self._session.request(method, self._base_url + path, data=payload) as response:
                status = response.status
                raw = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TokenCountError(f"tokenizer service unreachable: {type(exc).__name__}") from exc
        if status != 200:
            raise TokenCountError(f"tokenizer service answered HTTP {status}{_error_code(raw)}")
        try:
            return answer_type.model_validate_json(raw)
        except ValidationError as exc:
            raise TokenCountError(f"tokenizer service gave a malformed answer to {path}") from exc


def _error_code(raw: bytes) -> str:
    """`` (CODE)`` from an OpenAI-shaped error body, for the log line; empty for anything else."""
    try:
        error = orjson.loads(raw).get("error")
        code = error.get("code") if isinstance(error, dict) else None
    except (orjson.JSONDecodeError, AttributeError):
        return ""
    return f" ({code[:_CODE_LIMIT]})" if isinstance(code, str) else ""

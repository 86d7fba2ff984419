"""A token counter answered by a tokenizer service over HTTP (SPEC §5), e.g. ``cachegate tokenizer serve``.

The service renders the request with the model's chat template just as the in-process counter
does, so the counts are the same. It splits the request into blocks itself, with the same
``parse_prompt``: the block indexes the gateway asks for are sent with the gateway's prefix hash
after each, and a service whose split differs (another cachegate version) refuses instead of
counting other blocks. The service must therefore run the same cachegate version as the
gateways it serves, at least the same block layout (SPEC §4) and counting rules.

Every failure — the service down, slow past the timeout, refusing the request, answering
something malformed — is a ``TokenCountError``, on which the gateway degrades (SPEC §11).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import aiohttp
import orjson
from pydantic import BaseModel, ValidationError

from cachegate.core.types import ParsedPrompt
from cachegate.tokens.base import PromptCounts, TokenCountError
from cachegate.tokens.counter import TokenizerLoadError
from cachegate.tokens.service import ModelsAnswer, RenderAnswer

_JSON_HEADERS = {"content-type": "application/json"}
_CODE_LIMIT = 64  # an error code from the service goes into the gateway's log: keep it short

_Answer = TypeVar("_Answer", bound=BaseModel)


class RemoteTokenCounter:
    """A ``TokenCounter`` for ``model`` as the tokenizer service at ``base_url`` serves it.

    ``await open()`` before use: it learns the model's ``tokenizer_version`` (part of the cache
    scope), and fails with ``TokenizerLoadError`` when the service is unreachable or does not
    serve the model — a startup error, like a missing tokenizer file. ``timeout`` bounds each
    HTTP exchange, connection included. Connections are pooled in one session, made on the
    running loop the first time it is needed; ``aclose()`` closes it.
    """

    def __init__(self, base_url: str, model: str, *, timeout: float = 5.0) -> None:
        self._base_url = base_url.rstrip("/")
        self._model = model
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._version: str | None = None

    @property
    def tokenizer_version(self) -> str:
        if self._version is None:
            raise RuntimeError("RemoteTokenCounter.open() must be awaited before the counter is used")
        return self._version

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
        self._version = versions[self._model]

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
            # Counts of another tokenizer would be filed under this one's cache scope.
            raise TokenCountError(
                f"the tokenizer service now counts model {self._model!r} with another tokenizer version;"
                " restart the gateway to take it up"
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
        )

    async def aclose(self) -> None:
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

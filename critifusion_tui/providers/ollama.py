"""Ollama through the official ``ollama`` client (local or remote server).

Two things the client leaves to us: a timeout (its default waits forever, and a timeout then
surfaces as a raw ``httpx.ReadTimeout``), and errors a person can act on (a refused
connection is the builtin ``ConnectionError``; a missing model is ``ResponseError`` 404).
The ``ollama`` package is imported on first use, off the ``--help`` path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from critifusion_tui.providers.base import (
    AuthenticationError,
    ChatCall,
    MessageLike,
    ModelNotFoundError,
    ModelRef,
    ProviderConnectionError,
    ProviderError,
    ProviderTimeoutError,
    RateLimitedError,
    UnusableAnswerError,
    as_messages,
    last_user_index,
    meter_hooks,
    note_usage,
    short_detail,
)
from critifusion_tui.providers.chat import Feed, HostedChat, HostedProvider, Request

if TYPE_CHECKING:
    from ollama import AsyncClient


class OllamaSettings(Protocol):
    """The fields of ``config.OllamaConfig`` this module reads."""

    host: str
    timeout_s: float
    keep_alive: str


def make_client(settings: OllamaSettings) -> AsyncClient:
    from ollama import AsyncClient

    # Every request and 429 is counted on the calling model's meter (the run's ledger).
    return AsyncClient(host=settings.host, timeout=settings.timeout_s, event_hooks=meter_hooks())


def keep_alive_value(text: str) -> float | str | None:
    """The ``keep_alive`` to send: None (server default) for "", seconds for a bare number.

    The server reads a string as a Go duration, where "-1" or "300" (no unit) is an error,
    while the number -1 means "keep loaded" and 300 means five minutes.
    """
    text = text.strip()
    if not text:
        return None
    if re.fullmatch(r"[-+]?\d+(\.\d+)?", text):
        return float(text)
    return text


def to_payload(messages: Sequence[MessageLike], image: bytes | None) -> list[dict[str, Any]]:
    """Ollama messages; the PNG rides on the last user turn as raw bytes in ``images``.

    The client base64-encodes bytes itself (it rejects a ``data:`` URL).
    """
    turns = as_messages(messages)
    payload: list[dict[str, Any]] = [{"role": m.role, "content": m.content} for m in turns]
    if image is not None:
        payload[last_user_index(turns)]["images"] = [image]
    return payload


class OllamaChat(HostedChat):
    """A :class:`~critifusion_tui.providers.base.ChatModel` for one Ollama model."""

    # Ollama's ``format`` takes a JSON schema (0.5+) and makes small models answer in shape.
    # An older server refuses it (400): free text then, and not asked again.
    schema_refusals = (400,)

    def request(self, call: ChatCall) -> Request:
        return dict(
            model=self.ref.name,
            messages=to_payload(call.messages, call.image),
            options={"temperature": call.temperature, "num_predict": call.max_tokens},
            keep_alive=keep_alive_value(self._provider.settings.keep_alive),
        )

    def with_schema(self, request: Request, schema: Mapping[str, object]) -> Request:
        return {**request, "format": dict(schema)}

    async def complete(self, client: AsyncClient, request: Request) -> Any:
        return await client.chat(**request)

    def read_answer(self, response: Any) -> str:
        raw = response.message.content or ""
        note_usage(getattr(response, "prompt_eval_count", None), getattr(response, "eval_count", None))
        return raw

    async def stream_into(self, client: AsyncClient, request: Request, feed: Feed) -> None:
        stream = await client.chat(**request, stream=True)
        async for part in stream:
            # ``message.thinking`` (reasoning models) is deliberately not shown.
            if part.message and part.message.content:
                feed(part.message.content)
            if part.done:  # the last part carries the token counts
                note_usage(getattr(part, "prompt_eval_count", None), getattr(part, "eval_count", None))


class OllamaProvider(HostedProvider["AsyncClient"]):
    """Owns the one ``ollama.AsyncClient`` (made on first use) and its models."""

    name = "ollama"
    chat_class = OllamaChat
    settings: OllamaSettings

    def make_client(self, ref: ModelRef | str) -> AsyncClient:
        return make_client(self.settings)

    def map_error(self, exc: BaseException, ref: ModelRef | str) -> ProviderError:
        return map_error(exc, ref, self.settings)

    async def list_models(self) -> list[str]:
        return await self.ask("ollama", list_models)

    async def has_vision(self, name: str) -> bool:
        return await self.ask(ModelRef("ollama", name), lambda client: has_vision(client, name))

    async def unload_loaded(self) -> list[str]:
        """Ask the server to unload every model it holds; returns their names."""
        return await self.ask("ollama", unload_loaded)


async def unload_loaded(client: AsyncClient) -> list[str]:
    """``/api/ps`` lists the models the server holds in memory; a generate request with no
    prompt and ``keep_alive: 0`` unloads one (the server waits for its requests in flight)."""
    response = await client.ps()
    names = [name for m in response.models if (name := m.model or m.name)]
    for name in names:
        await client.generate(model=name, keep_alive=0)
    return names


def is_local_host(host: str) -> bool:
    """Whether an Ollama host is this machine (loopback, or the "every address" bind)."""
    from urllib.parse import urlsplit

    text = host.strip()
    hostname = urlsplit(text if "://" in text else f"http://{text}").hostname or ""
    return hostname in ("localhost", "::1", "0.0.0.0", "::") or hostname.startswith("127.")


async def list_models(client: AsyncClient) -> list[str]:
    """Names of the pulled models (``/api/tags``), for ``critifusion doctor``."""
    response = await client.list()
    return [m.model for m in response.models if m.model]


def model_listed(name: str, available: Iterable[str]) -> bool:
    """Whether ``name`` is among ``available``; a name without a tag means ``:latest``."""
    wanted = name if ":" in name else f"{name}:latest"
    return any(n == name or n == wanted for n in available)


async def has_vision(client: AsyncClient, name: str) -> bool:
    """Whether the model takes images (``/api/show`` lists "vision" in ``capabilities``)."""
    response = await client.show(name)
    return "vision" in (response.capabilities or [])


def map_error(exc: BaseException, ref: ModelRef | str, settings: OllamaSettings) -> ProviderError:
    """The :class:`ProviderError` for an exception raised by the ``ollama`` client."""
    import httpx
    import pydantic
    from ollama import ResponseError

    if isinstance(exc, ProviderError):
        return exc
    name = ref.name if isinstance(ref, ModelRef) else str(ref)
    host = settings.host
    if isinstance(exc, httpx.TimeoutException):
        return ProviderTimeoutError(
            ref,
            f"no answer from Ollama within {settings.timeout_s:g} s",
            fix="raise providers.ollama.timeout_s (loading a large model can take minutes)",
        )
    # The client turns a refused connection into the builtin ConnectionError, but only
    # outside a stream; inside one the httpx error arrives as is.
    if isinstance(exc, (ConnectionError, httpx.TransportError)):
        return ProviderConnectionError(
            ref,
            f"cannot reach Ollama at {host}",
            fix=f"is `ollama serve` running at {host}? (providers.ollama.host or $OLLAMA_HOST)",
        )
    if isinstance(exc, ResponseError):
        status = exc.status_code if exc.status_code and exc.status_code > 0 else None
        detail = short_detail(exc.error)
        if status == 404:
            return ModelNotFoundError(
                ref,
                f"Ollama at {host} has no model {name!r}",
                fix=f"ollama pull {name}",
                status=status,
            )
        if status in (401, 403):
            return AuthenticationError(
                ref,
                f"Ollama at {host} refused the request (HTTP {status}): {detail}",
                fix="check $OLLAMA_API_KEY or the proxy in front of the server",
                status=status,
            )
        if status == 429:
            return RateLimitedError(
                ref,
                f"Ollama at {host} is rate-limiting requests (HTTP 429)",
                fix="wait and run again",
                status=status,
            )
        if status is not None and status >= 500:
            return ProviderConnectionError(
                ref,
                f"Ollama failed on its side (HTTP {status}): {detail}",
                fix="see the server log (`ollama serve`); the model may not fit in memory",
                status=status,
            )
        what = f"HTTP {status}" if status else "mid-answer"
        return ProviderError(ref, f"Ollama refused the request ({what}): {detail}", status=status)
    if isinstance(exc, (json.JSONDecodeError, pydantic.ValidationError, ValueError)):
        return UnusableAnswerError(ref, f"the answer could not be read: {short_detail(exc)}")
    return ProviderError(ref, f"unexpected failure: {type(exc).__name__}: {short_detail(exc)}")

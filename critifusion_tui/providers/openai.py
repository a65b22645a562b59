"""Any OpenAI-compatible server through the official ``openai`` client.

vLLM, llama.cpp's server, LM Studio, TGI, OpenRouter and OpenAI itself all speak the same
chat-completions API; ``[providers.openai] base_url`` says which one (including its ``/v1``,
as each of them documents it). Local servers need no key: ``api_key_env`` may be empty, and a
fixed stand-in is sent, since the client insists on one. The key is always passed
explicitly, so ``$OPENAI_API_KEY`` and ``$OPENAI_BASE_URL`` are never picked up behind the
config's back.

Constrained output: a stage may pass a JSON schema; it is sent as ``response_format``
``json_schema``. Servers that do not take it refuse the request (HTTP 400 or 422); the same
request is then sent once more as free text, the model is remembered as refusing, and the
result says which was used (``ChatResult.output``).

The ``openai`` package is imported on first use, off the ``--help`` path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from critifusion_tui.providers.base import (
    AuthenticationError,
    DeltaCallback,
    ModelNotFoundError,
    ModelRef,
    ProviderConnectionError,
    ProviderError,
    ProviderTimeoutError,
    RateLimitedError,
    UnusableAnswerError,
    meter_hooks,
    short_detail,
)
from critifusion_tui.providers.chat import HostedProvider, Request
from critifusion_tui.providers.completions import CompletionsChat

if TYPE_CHECKING:
    from openai import AsyncOpenAI

# Sent when no key is configured: local servers ignore it, the client requires one.
NO_KEY = "no-key"
# HTTP statuses with which a server refuses a request it cannot serve as asked.
_REFUSALS = (400, 422)


class OpenAISettings(Protocol):
    """The fields of ``config.OpenAIConfig`` this module reads."""

    base_url: str
    api_key_env: str
    timeout_s: float
    max_retries: int


def make_client(settings: OpenAISettings, ref: ModelRef | str = "openai") -> AsyncOpenAI:
    """One ``AsyncOpenAI`` for these settings; a named but unset key variable is an error."""
    key = NO_KEY
    if settings.api_key_env:
        key = os.environ.get(settings.api_key_env, "").strip()
        if not key:
            raise AuthenticationError(
                ref,
                f"no API key: ${settings.api_key_env} is not set",
                fix=f"export {settings.api_key_env}=<your key>, or set providers.openai.api_key_env ="
                ' "" for a local server that needs none',
            )
    from openai import AsyncOpenAI, DefaultAsyncHttpxClient

    return AsyncOpenAI(
        api_key=key,
        base_url=settings.base_url.strip().rstrip("/"),
        timeout=settings.timeout_s,
        max_retries=settings.max_retries,
        # Every request and 429 is counted on the calling model's meter (the run's ledger).
        http_client=DefaultAsyncHttpxClient(event_hooks=meter_hooks()),
    )


def response_format(schema: Mapping[str, Any], name: str = "answer") -> dict[str, Any]:
    """The ``response_format`` that asks for JSON following ``schema``."""
    return {"type": "json_schema", "json_schema": {"name": name, "schema": dict(schema)}}


class OpenAIChat(CompletionsChat):
    """A :class:`~critifusion_tui.providers.base.ChatModel` for one model on the server."""

    schema_refusals = _REFUSALS
    _provider: OpenAIProvider

    def with_schema(self, request: Request, schema: Mapping[str, object]) -> Request:
        return {**request, "response_format": response_format(schema)}

    async def stream(self, client: AsyncOpenAI, request: Request, on_delta: DeltaCallback) -> tuple[str, str]:
        if self.ref.name in self._provider.refuses_stream_usage:
            return await super().stream(client, request, on_delta)
        # Ask for the usage in the stream's last chunk (the run's ledger wants it); a server
        # that refuses the option is asked again without it, and not again after. With a
        # schema in the request the refusal goes to ``answer`` first, which drops the schema
        # (a server that takes the option is far commoner than one that takes json_schema but
        # not the option).
        try:
            return await super().stream(client, {**request, "stream_options": {"include_usage": True}}, on_delta)
        except ProviderError as exc:
            if exc.status not in _REFUSALS or exc.partial or "response_format" in request:
                raise
        result = await super().stream(client, request, on_delta)
        self._provider.refuses_stream_usage.add(self.ref.name)
        return result


class OpenAIProvider(HostedProvider["AsyncOpenAI"]):
    """Owns the one ``AsyncOpenAI`` client (made on first use) and its models."""

    name = "openai"
    chat_class = OpenAIChat
    settings: OpenAISettings

    def __init__(self, settings: OpenAISettings) -> None:
        super().__init__(settings)
        self.refuses_stream_usage: set[str] = set()  # models whose server refused stream_options

    def make_client(self, ref: ModelRef | str) -> AsyncOpenAI:
        return make_client(self.settings, ref)

    def map_error(self, exc: BaseException, ref: ModelRef | str) -> ProviderError:
        return map_error(exc, ref, self.settings)

    async def list_models(self) -> list[str]:
        """The ids the server lists at ``/models`` (for ``critifusion doctor``)."""
        return await self.ask("openai", _model_ids)


async def _model_ids(client: AsyncOpenAI) -> list[str]:
    page = await client.models.list()
    return [m.id async for m in page if getattr(m, "id", None)]


def map_error(exc: BaseException, ref: ModelRef | str, settings: OpenAISettings) -> ProviderError:
    """The :class:`ProviderError` for an exception raised by the ``openai`` client."""
    import openai

    if isinstance(exc, ProviderError):
        return exc
    where = settings.base_url
    name = ref.name if isinstance(ref, ModelRef) else str(ref)
    status = getattr(exc, "status_code", None)
    body = getattr(exc, "body", None)
    message = body.get("message") if isinstance(body, dict) else None
    detail = short_detail(message or getattr(exc, "message", None) or exc)
    # Order matters: APITimeoutError is an APIConnectionError, the status errors are APIErrors.
    if isinstance(exc, openai.APITimeoutError):
        return ProviderTimeoutError(
            ref,
            f"no answer from {where} within {settings.timeout_s:g} s",
            fix="raise providers.openai.timeout_s (a local server may still be loading the model)",
        )
    if isinstance(exc, openai.APIConnectionError):
        return ProviderConnectionError(
            ref,
            f"cannot reach the server at {where}",
            fix="is it running? check providers.openai.base_url (with its /v1)",
        )
    if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
        key = f"the key in ${settings.api_key_env}" if settings.api_key_env else "a request without a key"
        return AuthenticationError(
            ref,
            f"{where} refused {key} (HTTP {status}): {detail}",
            fix="set providers.openai.api_key_env to the variable holding the server's key",
            status=status,
        )
    if isinstance(exc, openai.NotFoundError):
        return ModelNotFoundError(
            ref,
            f"{where} has no model {name!r} (HTTP {status})",
            fix="`critifusion doctor` lists the server's models and the closest names",
            status=status,
        )
    if isinstance(exc, openai.RateLimitError):
        return RateLimitedError(
            ref,
            f"{where} is rate-limiting requests (HTTP 429)",
            fix="wait and run again, use fewer candidate models, or raise providers.openai.max_retries",
            status=status,
        )
    if isinstance(exc, openai.InternalServerError):
        return ProviderConnectionError(
            ref,
            f"the server failed on its side (HTTP {status}): {detail}",
            fix="see the server's log",
            status=status,
        )
    if isinstance(exc, openai.APIResponseValidationError) or isinstance(exc, ValueError):
        return UnusableAnswerError(ref, f"the answer could not be read: {detail}", status=status)
    if isinstance(exc, openai.APIError):
        what = f"HTTP {status}" if status else "error"
        return ProviderError(ref, f"the server refused the request ({what}): {detail}", status=status)
    return ProviderError(ref, f"unexpected failure: {type(exc).__name__}: {detail}")

"""Together AI through the official ``together`` 3.x client.

The client does the HTTP work, including its own retries with back-off that honours
``retry-after``; the chat itself is the OpenAI-style one (:mod:`.completions` over the
skeleton in :mod:`.chat`), and this module makes the client, lists the models and turns every
client error into a :class:`ProviderError`.
The ``together`` package is imported on first use: it costs a third of a second, which the
command line's ``--help`` should not pay.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Protocol

from critifusion_tui.providers.base import (
    AuthenticationError,
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
from critifusion_tui.providers.chat import HostedProvider
from critifusion_tui.providers.completions import CompletionsChat

if TYPE_CHECKING:
    from together import AsyncTogether

KEYS_PAGE = "https://api.together.ai/settings/api-keys"
MODELS_PAGE = "https://api.together.ai/models"


class TogetherSettings(Protocol):
    """The fields of ``config.TogetherConfig`` this module reads."""

    api_key_env: str
    base_url: str
    timeout_s: float
    max_retries: int


def api_root(base_url: str) -> str | None:
    """The API root the 3.x client expects, or None for the client's default.

    The client appends ``/v1/chat/completions`` itself, so a URL copied from an
    OpenAI-compatible setup (ending in ``/v1``) would become ``/v1/v1/...``: drop that suffix.
    """
    root = base_url.strip().rstrip("/")
    if root.endswith("/v1"):
        root = root[: -len("/v1")]
    return root or None


def make_client(settings: TogetherSettings, ref: ModelRef | str = "together") -> AsyncTogether:
    """One ``AsyncTogether`` for these settings; a missing key is an authentication error."""
    key = os.environ.get(settings.api_key_env, "").strip()
    if not key:
        # Name the variable, never a value.
        raise AuthenticationError(
            ref,
            f"no API key: ${settings.api_key_env} is not set",
            fix=f"export {settings.api_key_env}=<your key> (from {KEYS_PAGE})",
        )
    from together import AsyncTogether, DefaultAsyncHttpxClient

    return AsyncTogether(
        api_key=key,
        base_url=api_root(settings.base_url),
        timeout=settings.timeout_s,
        max_retries=settings.max_retries,
        # Every request and 429 is counted on the calling model's meter (the run's ledger).
        http_client=DefaultAsyncHttpxClient(event_hooks=meter_hooks()),
    )


class TogetherChat(CompletionsChat):
    """A :class:`~critifusion_tui.providers.base.ChatModel` for one Together model.

    Constrained output is not asked of Together (``with_schema`` stays None): free text.
    """


class TogetherProvider(HostedProvider["AsyncTogether"]):
    """Owns the one ``AsyncTogether`` client (made on first use) and its models."""

    name = "together"
    chat_class = TogetherChat
    settings: TogetherSettings

    def make_client(self, ref: ModelRef | str) -> AsyncTogether:
        return make_client(self.settings, ref)

    def map_error(self, exc: BaseException, ref: ModelRef | str) -> ProviderError:
        return map_error(exc, ref, self.settings)

    async def list_models(self) -> list[str]:
        return await self.ask("together", list_models)


async def list_models(client: AsyncTogether) -> list[str]:
    """Model ids the account can call serverless, for ``critifusion doctor``.

    In 3.x ``models.list()`` lists only a project's own models; the serverless catalogue is
    ``models.list_supported`` (GET /v2/supported-models). Where this client lacks it, or the
    endpoint is missing (an older or compatible server), GET /v1/models still answers.
    """
    from together import NotFoundError

    names: list[str] = []
    if hasattr(client.models, "list_supported"):
        try:
            async for entry in client.models.list_supported(product="PRODUCT_SERVERLESS"):
                # ``serverless_endpoint`` is what chat calls take; ``name`` is the HF id.
                endpoint = getattr(entry, "serverless_endpoint", None)
                for value in (endpoint, getattr(entry, "name", None)):
                    if value and value not in names:
                        names.append(value)
            return names
        except NotFoundError:
            pass  # no v2 catalogue on this server: GET /v1/models below answers instead
    body = await client.get("/v1/models", cast_to=object)
    entries = body.get("data", []) if isinstance(body, dict) else body
    for entry in entries if isinstance(entries, list) else []:
        value = entry.get("id") if isinstance(entry, dict) else None
        if value and value not in names:
            names.append(value)
    return names


def map_error(
    exc: BaseException,
    ref: ModelRef | str,
    settings: TogetherSettings,
) -> ProviderError:
    """The :class:`ProviderError` for an exception raised by the ``together`` client."""
    import together

    if isinstance(exc, ProviderError):
        return exc
    key_var = settings.api_key_env
    name = ref.name if isinstance(ref, ModelRef) else str(ref)
    status = getattr(exc, "status_code", None)
    error = _error_body(exc)
    detail = short_detail(error.get("message") or getattr(exc, "message", None) or exc)
    # Order matters: APITimeoutError is an APIConnectionError, the status errors are APIErrors.
    if isinstance(exc, together.APITimeoutError):
        return ProviderTimeoutError(
            ref,
            f"no answer within {settings.timeout_s:g} s",
            fix="raise providers.together.timeout_s, or try again",
        )
    if isinstance(exc, together.APIConnectionError):
        where = api_root(settings.base_url) or "api.together.ai"
        return ProviderConnectionError(
            ref,
            f"cannot reach Together at {where}",
            fix="check the network connection and providers.together.base_url",
        )
    if isinstance(exc, together.AuthenticationError):
        return AuthenticationError(
            ref,
            f"Together refused the key in ${key_var} (HTTP {status})",
            fix=f"check the key, then export {key_var}=<your key> (from {KEYS_PAGE})",
            status=status,
        )
    if isinstance(exc, together.PermissionDeniedError):
        return AuthenticationError(
            ref,
            f"the key in ${key_var} may not use this model (HTTP {status}): {detail}",
            fix="check the account's access to this model, or pick another",
            status=status,
        )
    if isinstance(exc, together.NotFoundError) or error.get("code") == "model_not_available":
        # Together has answered an unknown model with 400 ``model_not_available`` as well.
        return ModelNotFoundError(
            ref,
            f"Together has no model {name!r} (HTTP {status})",
            fix=f"pick a serverless model from {MODELS_PAGE}; `critifusion doctor` suggests close names",
            status=status,
        )
    if isinstance(exc, together.RateLimitError):
        retry_after = _retry_after(exc)
        wait = f"; the service asks to wait {retry_after:g} s" if retry_after is not None else ""
        return RateLimitedError(
            ref,
            f"Together is rate-limiting requests (HTTP 429){wait}",
            fix="wait and run again, use fewer candidate models, or raise providers.together.max_retries",
            status=status,
            retry_after=retry_after,
        )
    if isinstance(exc, together.InternalServerError):
        return ProviderConnectionError(
            ref,
            f"Together failed on its side (HTTP {status}): {detail}",
            fix="try again later",
            status=status,
        )
    if isinstance(exc, together.APIResponseValidationError) or isinstance(exc, ValueError):
        # ValueError covers a body that is not JSON (json.JSONDecodeError) or not the schema.
        return UnusableAnswerError(ref, f"the answer could not be read: {detail}", status=status)
    if isinstance(exc, together.APIError):
        # 400, 422 and friends, and an error event inside a stream.
        what = f"HTTP {status}" if status else "error"
        return ProviderError(ref, f"Together refused the request ({what}): {detail}", status=status)
    return ProviderError(ref, f"unexpected failure: {type(exc).__name__}: {detail}")


def _error_body(exc: BaseException) -> dict:
    """The ``error`` object of a Together error response (``{"error": {...}}``), or {}."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = body["error"]
    return body if isinstance(body, dict) else {}


def _retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare, and the client has already waited on it

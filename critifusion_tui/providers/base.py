"""What every chat backend shares: model references, the chat interface, typed errors.

A model reference names a backend and a model in one string, the form the config file and
the command line use: ``together:<model id>``, ``ollama:<model name>``, ``openai:<model id>``
(any OpenAI-compatible server), or ``rules`` (the method's offline fallback, which needs no
model at all).
"""

from __future__ import annotations

import abc
import contextlib
import contextvars
import difflib
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

# Model references live in a leaf (model_refs.py); re-exported here for the providers.
from critifusion_tui.model_refs import PROVIDERS as PROVIDERS
from critifusion_tui.model_refs import REF_FORMS as REF_FORMS
from critifusion_tui.model_refs import ModelRef as ModelRef
from critifusion_tui.model_refs import ModelRefError as ModelRefError

# --- Messages and results -----------------------------------------------------------------

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    """One chat turn. CritiCore sends a system turn and a user turn."""

    role: Role
    content: str


def system(content: str) -> Message:
    return Message("system", content)


def user(content: str) -> Message:
    return Message("user", content)


MessageLike = Message | Mapping[str, str]


def as_messages(messages: Sequence[MessageLike]) -> list[Message]:
    """Accept :class:`Message` objects or ``{"role": ..., "content": ...}`` mappings."""
    result = []
    for item in messages:
        if isinstance(item, Message):
            result.append(item)
        else:
            result.append(Message(item["role"], item["content"]))  # type: ignore[arg-type]
    if not result:
        raise ValueError("a chat needs at least one message")
    return result


def last_user_index(messages: Sequence[Message]) -> int:
    """Where an image goes: the last user turn (an image needs a user turn to ride on)."""
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].role == "user":
            return index
    raise ValueError("an image needs a user message to attach to")


@dataclass(frozen=True)
class ChatResult:
    """A finished answer: cleaned text (see :mod:`.hygiene`), who gave it, how long it took,
    and how its shape was asked for: "free" text, "json_schema" (constrained output), or
    "free (json_schema refused)" when the server would not take the schema."""

    text: str
    model: ModelRef
    seconds: float
    output: str = "free"
    truncated: bool = False  # cut at the size cap (see bounded.py)


DeltaCallback = Callable[[str], None]
RAW_KEEP = 4096  # characters of a raw streamed answer kept for diagnostics
RAW_LIMIT = 8 * 2**20  # characters of raw stream (reasoning included) before it is stopped


class StreamCollector:
    """What every streaming backend does with its raw deltas: clean them (hygiene holds back
    what may still change meaning), pass each cleaned piece on, keep the whole answer.

    An error raised by ``on_delta`` itself is the caller's, not the backend's: ``owns(exc)``
    tells the backend to re-raise it as it is instead of mapping it to a ProviderError.
    """

    def __init__(self, on_delta: DeltaCallback) -> None:
        from critifusion_tui.providers.hygiene import StreamCleaner

        self._on_delta = on_delta
        self._cleaner = StreamCleaner()
        self._parts: list[str] = []
        # The start of the raw answer, kept only to say why an answer came out empty; the
        # rest is counted, not kept (hidden reasoning alone may be unbounded).
        self._raw: list[str] = []
        self._raw_size = 0
        self._callback_error: BaseException | None = None

    def feed(self, raw_piece: str) -> None:
        if self._raw_size < RAW_KEEP:
            self._raw.append(raw_piece[: RAW_KEEP - self._raw_size])
        self._raw_size += len(raw_piece)
        if self._raw_size > RAW_LIMIT:
            raise UnusableAnswerError(
                "stream",
                f"the answer passed {RAW_LIMIT:,} characters without usable text; stopped",
                fix="lower max_tokens or pick another model",
            )
        self._deliver(self._cleaner.feed(raw_piece))

    def finish(self) -> tuple[str, str]:
        """Flush what the cleaner held back; return the cleaned and the (start of the) raw answer."""
        self._deliver(self._cleaner.finish())
        return "".join(self._parts), "".join(self._raw)

    def owns(self, exc: BaseException) -> bool:
        return exc is self._callback_error

    @property
    def started(self) -> bool:
        """Whether any of the answer arrived (a failure after that is not a refusal)."""
        return bool(self._raw)

    def _deliver(self, piece: str) -> None:
        if piece:
            self._parts.append(piece)
            try:
                self._on_delta(piece)
            except BaseException as exc:
                self._callback_error = exc
                raise


@dataclass(frozen=True)
class ChatCall:
    """One chat call's arguments, as :meth:`ChatModel.chat` takes them: what a model answers
    and what a wrapper passes on (``send``), so the signature is written once."""

    messages: Sequence[MessageLike]
    temperature: float
    max_tokens: int
    image: bytes | None = None
    on_delta: DeltaCallback | None = None
    schema: Mapping[str, object] | None = None

    async def send(self, model: ChatModel, *, on_delta: DeltaCallback | None = None) -> ChatResult:
        """Ask ``model`` the same, with ``on_delta`` in place of the call's own where given.

        The schema is passed only when there is one, so a model written without the
        parameter (a test double) can still be wrapped.
        """
        extra: dict[str, Any] = {"schema": self.schema} if self.schema is not None else {}
        return await model.chat(
            self.messages,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            image=self.image,
            on_delta=on_delta or self.on_delta,
            **extra,
        )


class ChatModel(abc.ABC):
    """One model behind one backend; the only interface the engine talks to.

    ``chat`` sends the messages (the image, PNG bytes, rides on the last user message) and
    returns the cleaned answer. ``schema`` (a JSON schema) asks for constrained output where
    the backend offers it; a backend without it answers free text. With ``on_delta`` the call streams and passes each cleaned
    piece of text as it arrives; the pieces concatenate to ``ChatResult.text``. Failures raise
    a :class:`ProviderError` subclass; an answer that is empty after cleaning raises
    :class:`UnusableAnswerError`. Cancelling the awaiting task closes the request.

    Every model the router hands out derives from this class, and ``chat`` is the one place
    its signature is written: it packs the arguments into a :class:`ChatCall` for ``answer``,
    which a backend (``chat.HostedChat``), a wrapper (``chat.ChatWrapper``) or the engine's
    offline model writes. Callers, and test doubles, need only ``ref`` and ``chat``.
    """

    ref: ModelRef

    async def chat(
        self,
        messages: Sequence[MessageLike],
        *,
        temperature: float,
        max_tokens: int,
        image: bytes | None = None,
        on_delta: DeltaCallback | None = None,
        schema: Mapping[str, object] | None = None,
    ) -> ChatResult:
        return await self.answer(ChatCall(messages, temperature, max_tokens, image, on_delta, schema))

    @abc.abstractmethod
    async def answer(self, call: ChatCall) -> ChatResult:
        """The answer to one call (``chat``'s arguments, packed)."""


# --- Errors -------------------------------------------------------------------------------


class ProviderError(Exception):
    """A model call that failed, worded for the person who has to act on it.

    ``ref`` is the model (as text, e.g. ``together:Qwen/...``), ``message`` says what went
    wrong in one short sentence, ``fix`` what to do about it when there is something to do.
    Raised as is for refusals with no better class (HTTP 400, 422, an error mid-stream).
    ``code`` is a stable word for manifests and events.
    """

    code = "provider_error"
    partial = False  # True when the failure came after part of a streamed answer arrived

    def __init__(
        self,
        ref: ModelRef | str,
        message: str,
        *,
        fix: str | None = None,
        status: int | None = None,
    ) -> None:
        from critifusion_tui.redact import redact

        # A server may echo the request (its Authorization header, a URL with a password)
        # in its error text: no message of ours carries it on.
        self.ref = str(ref)
        self.message = redact(message)
        self.fix = redact(fix) if fix else fix
        self.status = status
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.ref}: {self.message}"
        return f"{text}; {self.fix}" if self.fix else text


class AuthenticationError(ProviderError):
    """No key, or a key the service refuses (HTTP 401/403)."""

    code = "authentication"


class ModelNotFoundError(ProviderError):
    """The backend does not have (or does not serve) this model (HTTP 404)."""

    code = "model_not_found"


class RateLimitedError(ProviderError):
    """Too many requests (HTTP 429), after the client's own retries were spent."""

    code = "rate_limited"

    def __init__(self, *args: Any, retry_after: float | None = None, **kwargs: Any) -> None:
        self.retry_after = retry_after
        super().__init__(*args, **kwargs)


class ProviderTimeoutError(ProviderError):
    """No answer within the configured ``timeout_s``."""

    code = "timeout"


class ProviderConnectionError(ProviderError):
    """The service cannot be reached, or failed on its side (HTTP 5xx)."""

    code = "connection"


class UnusableAnswerError(ProviderError):
    """An answer came, but nothing usable is in it (empty after cleaning, or not parseable)."""

    code = "unusable_answer"


def empty_answer(ref: ModelRef | str, raw: str) -> UnusableAnswerError:
    """The error for an answer with nothing left after cleaning, saying why it was empty."""
    if raw.strip():
        return UnusableAnswerError(
            ref,
            "the answer was empty after cleaning: it held only reasoning (<think>) or control characters",
            fix="raise max_tokens if a reasoning model ran out of room, or pick another model",
        )
    return UnusableAnswerError(ref, "the model sent an empty answer")


def short_detail(text: object, limit: int = 200) -> str:
    """A server's error text, cleaned and shortened for a one-line message."""
    from critifusion_tui.providers.hygiene import clean_outside

    return clean_outside(text, limit=limit)


def closest_names(missing: str, available: Iterable[str], n: int = 3) -> list[str]:
    """Up to ``n`` available model names that look like ``missing`` (for "did you mean").

    Compares case-insensitively and also on the part after the last "/", so a Together id
    with the wrong organisation still finds its model.
    """
    names = list(dict.fromkeys(available))
    by_key: dict[str, str] = {}
    for name in names:
        by_key.setdefault(name.lower(), name)
        by_key.setdefault(name.rsplit("/", 1)[-1].lower(), name)
    found: list[str] = []
    for probe in (missing.lower(), missing.rsplit("/", 1)[-1].lower()):
        for key in difflib.get_close_matches(probe, list(by_key), n=n * 2, cutoff=0.5):
            if by_key[key] not in found:
                found.append(by_key[key])
    return found[:n]


# --- The meter: what one model call cost (the engine's ledger reads it) --------------------


@dataclass
class CallMeter:
    """What happened on the wire during one model call.

    ``attempts`` counts the HTTP requests sent (a client's own retries included), ``throttled``
    those answered 429; ``tokens_in``/``tokens_out`` are the server's usage figures when it
    reported them (None otherwise). Filled by each client's HTTP hooks and by the backend
    when it reads the usage; holds no key, no URL, no text.
    """

    attempts: int = 0
    throttled: int = 0
    tokens_in: int | None = None
    tokens_out: int | None = None
    sends: int = 0  # requests the backend itself made (a refused schema asks twice): not retries
    counted: bool = False  # the tokens were counted here, the server reported none
    source: str = "provider"  # "cache" or "replay": the answer came without a request

    @property
    def retries(self) -> int:
        """Requests the client repeated on its own (after a 429, a 5xx, a dropped connection)."""
        return max(0, self.attempts - max(self.sends, 1 if self.attempts else 0))

    def usage(self, tokens_in: object, tokens_out: object) -> None:
        """Record the server's usage figures (ignoring what is not a number)."""
        if isinstance(tokens_in, int) and tokens_in >= 0:
            self.tokens_in = tokens_in
        if isinstance(tokens_out, int) and tokens_out >= 0:
            self.tokens_out = tokens_out


_METER: contextvars.ContextVar[CallMeter | None] = contextvars.ContextVar("critifusion_call_meter", default=None)


@contextlib.contextmanager
def metered() -> Iterator[CallMeter]:
    """Meter the model call made inside the block (in this task and the tasks it awaits)."""
    meter = CallMeter()
    token = _METER.set(meter)
    try:
        yield meter
    finally:
        _METER.reset(token)


def current_meter() -> CallMeter | None:
    return _METER.get()


async def _on_request(request: object) -> None:
    meter = _METER.get()
    if meter is not None:
        meter.attempts += 1


async def _on_response(response: object) -> None:
    meter = _METER.get()
    if meter is not None and getattr(response, "status_code", None) == 429:
        meter.throttled += 1


# httpx event hooks for a backend's client: every request and every 429 counted on the meter
# of the call that sent it.
METER_HOOKS: dict[str, list[Callable[[Any], Awaitable[None]]]] = {"request": [_on_request], "response": [_on_response]}


def meter_hooks() -> dict[str, list[Callable[[Any], Awaitable[None]]]]:
    """:data:`METER_HOOKS` for one client, in lists of its own (a client may add to them)."""
    return {k: list(v) for k, v in METER_HOOKS.items()}


def note_send() -> None:
    """A backend is about to send one request of its own (retries are the client's)."""
    meter = _METER.get()
    if meter is not None:
        meter.sends += 1


def note_usage(tokens_in: object, tokens_out: object) -> None:
    """A backend read the server's usage figures: put them on the current call's meter."""
    meter = _METER.get()
    if meter is not None:
        meter.usage(tokens_in, tokens_out)

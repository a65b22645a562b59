"""The one chat skeleton: what every hosted backend does around its client, and the base of
the wrappers the router puts around a model.

A hosted backend is two classes. Its :class:`HostedProvider` owns the one client (made on
first use, closed by ``aclose``) and says how to make it and how to word that library's
exceptions (``map_error``). Its :class:`HostedChat` says only how to build the request, send
it, read the answer, and stream it; :meth:`HostedChat.answer` does the rest the same way for
every backend: the timing, constrained output with its free-text fallback (a server that
refuses the schema is not asked for it again), the meter's sends, the error mapping (an
error raised by the caller's ``on_delta`` passes through as it is), the cleaning of the
streamed pieces (:class:`~critifusion_tui.providers.base.StreamCollector`) and the empty
answer.

A wrapper (:class:`ChatWrapper`: ``limits.LimitedChat``, ``bounded.BoundedChat``) receives the
call packed in a :class:`~critifusion_tui.providers.base.ChatCall` and passes it on with
``call.send(inner)``, so no wrapper restates the chat signature.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from critifusion_tui.providers.base import (
    ChatCall,
    ChatModel,
    ChatResult,
    DeltaCallback,
    ModelRef,
    ProviderError,
    StreamCollector,
    empty_answer,
    note_send,
)
from critifusion_tui.providers.hygiene import clean_model_text


class Client(Protocol):
    """What the skeleton itself needs of a backend's client."""

    async def close(self) -> None: ...


ClientT = TypeVar("ClientT", bound=Client)
T = TypeVar("T")
Request = dict[str, Any]
Feed = Callable[[str], None]


class ChatWrapper(ChatModel):
    """A chat model around another: the same ``ref``, and whatever else a caller reads (a
    backend's own helpers) is the wrapped model's. Subclasses write ``answer`` and pass the
    call on with ``call.send(self.inner)``."""

    def __init__(self, inner: ChatModel) -> None:
        self.inner = inner
        self.ref = inner.ref

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (a copy being made): no recursion through getattr
            raise AttributeError(name)
        return getattr(self.inner, name)


class HostedChat(ChatModel):
    """One model of a hosted backend. Subclasses supply the request (``request``,
    ``with_schema``), one answer (``complete``, ``read_answer``) and a stream
    (``stream_into``); their provider maps the library's exceptions."""

    # HTTP statuses with which the backend's servers refuse constrained output; a refusal
    # with one of them sends the request again as free text.
    schema_refusals: ClassVar[tuple[int, ...]] = ()

    def __init__(self, ref: ModelRef, provider: HostedProvider[Any]) -> None:
        self.ref = ref
        self._provider = provider

    # --- what a backend supplies -----------------------------------------------------------

    @abc.abstractmethod
    def request(self, call: ChatCall) -> Request:
        """The request's arguments for the client (messages in the backend's form)."""

    def with_schema(self, request: Request, schema: Mapping[str, object]) -> Request | None:
        """``request`` asking for output following ``schema``; None where the backend is
        not asked for constrained output (the answer is free text)."""
        return None

    @abc.abstractmethod
    async def complete(self, client: Any, request: Request) -> Any:
        """Send the request without streaming; the client's response."""

    @abc.abstractmethod
    def read_answer(self, response: Any) -> str:
        """The raw answer text in a response (and its usage figures onto the meter)."""

    @abc.abstractmethod
    async def stream_into(self, client: Any, request: Request, feed: Feed) -> None:
        """Send the request streaming and ``feed`` each raw piece of the answer's content
        (not hidden reasoning) as it arrives, the usage figures onto the meter; the stream is
        closed when this returns or raises."""

    # --- the skeleton ----------------------------------------------------------------------

    async def answer(self, call: ChatCall) -> ChatResult:
        request = self.request(call)
        started = time.perf_counter()
        output = "free"
        shaped = None
        if call.schema is not None and self.ref.name not in self._provider.refuses_schema:
            shaped = self.with_schema(request, call.schema)
        if shaped is not None:
            try:
                text, raw = await self.send(shaped, call.on_delta)
                output = "json_schema"
            except ProviderError as exc:
                if exc.status not in self.schema_refusals:
                    raise
                # The server does not take the schema here: free text, and not asked again.
                self._provider.refuses_schema.add(self.ref.name)
                text, raw = await self.send(request, call.on_delta)
                output = "free (json_schema refused)"
        else:
            text, raw = await self.send(request, call.on_delta)
        if not text:
            raise empty_answer(self.ref, raw)
        return ChatResult(text, self.ref, time.perf_counter() - started, output=output)

    async def send(self, request: Request, on_delta: DeltaCallback | None) -> tuple[str, str]:
        """One request, whole or streamed through ``on_delta``: the cleaned and the raw text."""
        client = self._provider.client(self.ref)
        if on_delta is not None:
            return await self.stream(client, request, on_delta)
        note_send()
        try:
            response = await self.complete(client, request)
        except Exception as exc:
            raise self._provider.map_error(exc, self.ref) from exc
        raw = self.read_answer(response)
        return clean_model_text(raw), raw

    async def stream(self, client: Any, request: Request, on_delta: DeltaCallback) -> tuple[str, str]:
        """Stream the answer through ``on_delta`` (cleaned); return the cleaned and the raw text.

        A failure after part of the answer arrived is marked ``partial`` (not a refusal).
        """
        note_send()
        collector = StreamCollector(on_delta)
        try:
            await self.stream_into(client, request, collector.feed)
        except Exception as exc:
            if collector.owns(exc):
                raise
            error = self._provider.map_error(exc, self.ref)
            error.partial = collector.started
            raise error from exc
        return collector.finish()


class HostedProvider(abc.ABC, Generic[ClientT]):
    """Owns a backend's one client (made on first use) and hands out its models.

    Subclasses name the backend (``name``), its model class (``chat_class``), and write
    ``make_client`` and ``map_error``.
    """

    name: ClassVar[str]
    chat_class: ClassVar[type[HostedChat]]

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self._client: ClientT | None = None
        self.refuses_schema: set[str] = set()  # models whose server refused constrained output

    @abc.abstractmethod
    def make_client(self, ref: ModelRef | str) -> ClientT:
        """A new client for these settings; ``ref`` names the caller in a missing-key error."""

    @abc.abstractmethod
    def map_error(self, exc: BaseException, ref: ModelRef | str) -> ProviderError:
        """The :class:`ProviderError` for an exception raised by this backend's client."""

    def client(self, ref: ModelRef | str | None = None) -> ClientT:
        if self._client is None:
            self._client = self.make_client(ref or self.name)
        return self._client

    def model(self, name: str) -> HostedChat:
        return self.chat_class(ModelRef(self.name, name), self)

    async def ask(self, ref: ModelRef | str, request: Callable[[ClientT], Awaitable[T]]) -> T:
        """A request that is not a chat (a model list, a model's details), its errors mapped."""
        try:
            return await request(self.client())
        except ProviderError:
            raise
        except Exception as exc:
            raise self.map_error(exc, ref) from exc

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

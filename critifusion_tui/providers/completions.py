"""The OpenAI-style chat-completions API, which the ``together`` and ``openai`` clients both
speak: the payload (the image as a data URL part), one answer's text and usage, a stream's
content deltas and its last chunk's usage.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from critifusion_tui.providers.base import ChatCall, MessageLike, as_messages, last_user_index, note_usage
from critifusion_tui.providers.chat import Feed, HostedChat, Request


def to_payload(messages: Sequence[MessageLike], image: bytes | None) -> list[dict[str, Any]]:
    """OpenAI-style messages; the PNG rides on the last user turn as a data URL part."""
    turns = as_messages(messages)
    payload: list[dict[str, Any]] = [{"role": m.role, "content": m.content} for m in turns]
    if image is not None:
        index = last_user_index(turns)
        data_url = "data:image/png;base64," + base64.b64encode(image).decode("ascii")
        payload[index]["content"] = [
            {"type": "text", "text": turns[index].content},
            {"type": "image_url", "image_url": {"url": data_url}},
        ]
    return payload


def read_usage(response: Any) -> None:
    """Put an OpenAI-style ``usage`` (a response's, or a stream's last chunk's) on the meter."""
    usage = getattr(response, "usage", None)
    if usage is not None:
        note_usage(getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None))


class CompletionsChat(HostedChat):
    """A :class:`HostedChat` over ``client.chat.completions.create``."""

    def request(self, call: ChatCall) -> Request:
        return dict(
            model=self.ref.name,
            messages=to_payload(call.messages, call.image),
            temperature=call.temperature,
            max_tokens=call.max_tokens,
        )

    async def complete(self, client: Any, request: Request) -> Any:
        return await client.chat.completions.create(**request)

    def read_answer(self, response: Any) -> str:
        choices = response.choices or []
        content = choices[0].message.content if choices and choices[0].message else None
        read_usage(response)
        return content if isinstance(content, str) else str(content or "")

    async def stream_into(self, client: Any, request: Request, feed: Feed) -> None:
        stream = await client.chat.completions.create(**request, stream=True)
        async with stream:
            async for chunk in stream:
                read_usage(chunk)  # the last chunk carries the usage
                for choice in chunk.choices or []:
                    # Only content: ``reasoning`` / ``reasoning_content`` deltas are hidden thoughts.
                    if choice.index == 0 and choice.delta and choice.delta.content:
                        feed(choice.delta.content)

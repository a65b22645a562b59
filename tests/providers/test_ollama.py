"""The Ollama backend: the real ``ollama`` client against the loopback server."""

from __future__ import annotations

import asyncio
import base64
import time

import pytest

from critifusion_tui.providers.base import (
    AuthenticationError,
    ModelNotFoundError,
    ProviderConnectionError,
    ProviderError,
    ProviderTimeoutError,
    RateLimitedError,
    UnusableAnswerError,
    system,
    user,
)
from critifusion_tui.providers.ollama import OllamaProvider, keep_alive_value, model_listed
from tests.loopback import PNG_1PX
from tests.loopback import unused_port

CHAT = "/api/chat"
MESSAGES = [system("You are a precise image critic."), user("Critique this image of a fox.")]


@pytest.fixture
async def provider(ollama_config):
    provider = OllamaProvider(ollama_config)
    yield provider
    await provider.aclose()


async def test_request_body_and_answer(server, provider) -> None:
    server.script("qwen2.5:7b", text="<issues>none</issues>")
    result = await provider.model("qwen2.5:7b").chat(MESSAGES, temperature=0.4, max_tokens=256)

    assert result.text == "<issues>none</issues>"
    assert str(result.model) == "ollama:qwen2.5:7b"
    body = server.last(CHAT).body
    assert body["model"] == "qwen2.5:7b"
    assert body["options"] == {"temperature": 0.4, "num_predict": 256}
    assert body["keep_alive"] == "7m"
    assert body["stream"] is False
    assert body["messages"] == [
        {"role": "system", "content": "You are a precise image critic."},
        {"role": "user", "content": "Critique this image of a fox."},
    ]


async def test_image_is_plain_base64_in_images(server, provider) -> None:
    await provider.model("llava").chat(MESSAGES, temperature=0.2, max_tokens=420, image=PNG_1PX)

    system_turn, user_turn = server.last(CHAT).body["messages"]
    assert "images" not in system_turn
    assert user_turn["content"] == "Critique this image of a fox."
    (encoded,) = user_turn["images"]
    assert not encoded.startswith("data:")
    assert base64.b64decode(encoded) == PNG_1PX


async def test_streaming_deltas_arrive_in_order_and_cleaned(server, provider) -> None:
    chunks = ["<think>the fox", " is orange</thi", "nk>\n\x1b[1m<refined>", "a red fox\x1b", "]0;x\x07</refined>"]
    server.script("m-stream", chunks=chunks)
    deltas: list[str] = []
    result = await provider.model("m-stream").chat(MESSAGES, temperature=0.2, max_tokens=420, on_delta=deltas.append)

    assert deltas == ["<refined>", "a red fox", "</refined>"]
    assert result.text == "<refined>a red fox</refined>"
    assert server.last(CHAT).body["stream"] is True


@pytest.mark.parametrize(
    ("script", "error", "words"),
    [
        (
            dict(status=404, error="model 'm-fault' not found, try pulling it first"),
            ModelNotFoundError,
            "ollama pull m-fault",
        ),
        (dict(status=401), AuthenticationError, "HTTP 401"),
        (dict(status=429), RateLimitedError, "HTTP 429"),
        (dict(status=500, error="model requires more system memory"), ProviderConnectionError, "more system memory"),
        (dict(status=400, error="invalid options"), ProviderError, "invalid options"),
        (dict(garbage="<html>proxy</html>"), UnusableAnswerError, "could not be read"),
        (dict(text="<think>only reasoning"), UnusableAnswerError, "raise max_tokens"),
        (dict(text=""), UnusableAnswerError, "sent an empty answer"),
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "ndjson"])
async def test_faults_map_to_typed_errors(server, provider, script, error, words, stream) -> None:
    server.script("m-fault", **script)
    on_delta = (lambda piece: None) if stream else None
    with pytest.raises(ProviderError) as caught:
        await provider.model("m-fault").chat(MESSAGES, temperature=0.2, max_tokens=10, on_delta=on_delta)

    assert type(caught.value) is error
    assert caught.value.ref == "ollama:m-fault"
    assert words in str(caught.value)


async def test_error_mid_stream_is_a_provider_error(server, provider) -> None:
    server.script("m-mid", chunks=["partial "], garbage='{"error": "the runner crashed"}')
    seen: list[str] = []
    with pytest.raises(ProviderError, match="the runner crashed"):
        await provider.model("m-mid").chat(MESSAGES, temperature=0.2, max_tokens=10, on_delta=seen.append)
    assert seen == ["partial"]


async def test_hang_past_timeout_is_a_timeout(server, ollama_config) -> None:
    ollama_config.timeout_s = 0.5
    server.script("m-hang", hang=True)
    provider = OllamaProvider(ollama_config)
    started = time.perf_counter()
    try:
        with pytest.raises(ProviderTimeoutError) as caught:
            await provider.model("m-hang").chat(MESSAGES, temperature=0.2, max_tokens=10)
    finally:
        await provider.aclose()
    assert 0.4 < time.perf_counter() - started < 1.5
    assert caught.value.ref == "ollama:m-hang"
    assert "providers.ollama.timeout_s" in caught.value.fix


@pytest.mark.parametrize("stream", [False, True], ids=["json", "ndjson"])
async def test_connection_refused_asks_whether_ollama_serve_runs(ollama_config, stream) -> None:
    ollama_config.host = f"http://127.0.0.1:{unused_port()}"
    provider = OllamaProvider(ollama_config)
    on_delta = (lambda piece: None) if stream else None
    try:
        with pytest.raises(ProviderConnectionError) as caught:
            await provider.model("llava").chat(MESSAGES, temperature=0.2, max_tokens=10, on_delta=on_delta)
    finally:
        await provider.aclose()
    assert caught.value.ref == "ollama:llava"
    assert f"is `ollama serve` running at {ollama_config.host}?" in caught.value.fix


async def test_five_concurrent_calls_overlap(server, provider) -> None:
    names = [f"m-{i}" for i in range(5)]
    for name in names:
        server.script(name, text=f"answer {name}", delay=0.5)
    started = time.perf_counter()
    results = await asyncio.gather(*(provider.model(n).chat(MESSAGES, temperature=0.7, max_tokens=220) for n in names))
    elapsed = time.perf_counter() - started

    assert [r.text for r in results] == [f"answer {n}" for n in names]
    # Overlapping: every request reached the server before the first answer could have come
    # (0.5 s); one after the other, they would arrive at least 0.5 s apart each. The wall
    # time is printed, not asserted: a loaded machine stretches it (benchmarks/ measures it).
    arrivals = [r.at for r in server.requests_to(CHAT)]
    print(f"five 0.5 s calls: {elapsed:.2f} s")
    assert len(arrivals) == 5 and max(arrivals) - min(arrivals) < 0.5, arrivals


async def test_list_models_and_vision(server, provider) -> None:
    server.add_model("llava:latest", vision=True)
    server.add_model("qwen2.5:7b")
    assert await provider.list_models() == ["llava:latest", "qwen2.5:7b"]
    assert await provider.has_vision("llava") is True
    assert await provider.has_vision("qwen2.5:7b") is False
    with pytest.raises(ModelNotFoundError, match="ollama pull missing"):
        await provider.has_vision("missing")


async def test_list_models_without_a_server(ollama_config) -> None:
    ollama_config.host = f"http://127.0.0.1:{unused_port()}"
    provider = OllamaProvider(ollama_config)
    with pytest.raises(ProviderConnectionError, match="ollama serve"):
        await provider.list_models()
    await provider.aclose()


def test_keep_alive_value() -> None:
    assert keep_alive_value("5m") == "5m"
    assert keep_alive_value("-1") == -1.0  # "keep loaded"; as a string the server refuses it
    assert keep_alive_value("300") == 300.0
    assert keep_alive_value("  ") is None


async def test_numeric_keep_alive_is_sent_as_a_number(server, ollama_config) -> None:
    ollama_config.keep_alive = "-1"
    provider = OllamaProvider(ollama_config)
    await provider.model("m").chat(MESSAGES, temperature=0.2, max_tokens=10)
    await provider.aclose()
    assert server.last(CHAT).body["keep_alive"] == -1


def test_model_listed_reads_a_bare_name_as_latest() -> None:
    assert model_listed("llava", ["llava:latest"])
    assert model_listed("llava:13b", ["llava:13b"])
    assert not model_listed("llava:13b", ["llava:latest"])


async def test_an_error_in_on_delta_passes_through_unmapped(server, provider) -> None:
    def refuse(piece: str) -> None:
        raise ValueError("the display is gone")

    with pytest.raises(ValueError, match="the display is gone"):
        await provider.model("m").chat(MESSAGES, temperature=0.2, max_tokens=10, on_delta=refuse)

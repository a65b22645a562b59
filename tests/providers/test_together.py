"""The Together backend: the real ``together`` client against the loopback server."""

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
from critifusion_tui.providers.together import TogetherProvider, api_root
from tests.loopback import KEY_VALUE, KEY_VAR, PNG_1PX
from tests.loopback import unused_port

CHAT = "/v1/chat/completions"
MESSAGES = [system("You expand prompts into SDXL tags."), user("a red fox in snow")]


@pytest.fixture
async def provider(together_config):
    provider = TogetherProvider(together_config)
    yield provider
    await provider.aclose()


async def test_request_body_and_answer(server, provider) -> None:
    server.script("m-tags", text="fox, snow, golden hour")
    result = await provider.model("m-tags").chat(MESSAGES, temperature=0.7, max_tokens=220)

    assert result.text == "fox, snow, golden hour"
    assert str(result.model) == "together:m-tags"
    assert 0 <= result.seconds < 2
    request = server.last(CHAT)
    assert request.headers["authorization"] == f"Bearer {KEY_VALUE}"
    assert request.body["model"] == "m-tags"
    assert request.body["temperature"] == 0.7
    assert request.body["max_tokens"] == 220
    assert request.body["messages"] == [
        {"role": "system", "content": "You expand prompts into SDXL tags."},
        {"role": "user", "content": "a red fox in snow"},
    ]
    assert not request.body.get("stream")


async def test_image_is_a_data_url_part_beside_the_text(server, provider) -> None:
    await provider.model("m-vlm").chat(MESSAGES, temperature=0.2, max_tokens=420, image=PNG_1PX)

    messages = server.last(CHAT).body["messages"]
    assert messages[0] == {"role": "system", "content": "You expand prompts into SDXL tags."}
    text_part, image_part = messages[1]["content"]
    assert text_part == {"type": "text", "text": "a red fox in snow"}
    assert image_part["type"] == "image_url"
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.removeprefix("data:image/png;base64,")) == PNG_1PX


async def test_streaming_deltas_arrive_in_order_and_cleaned(server, provider) -> None:
    # The tags and the escape sequences straddle chunk boundaries.
    chunks = ["<thi", "nk>reasoning</th", "ink>\x1b[3", "1mfox\x1b", "[0m, snow", ", [bold]dusk[/]"]
    server.script("m-stream", chunks=chunks)
    deltas: list[str] = []
    result = await provider.model("m-stream").chat(MESSAGES, temperature=0.7, max_tokens=220, on_delta=deltas.append)

    assert result.text == "fox, snow, [bold]dusk[/]"
    assert deltas == ["fox", ", snow", ", [bold]dusk[/]"]  # as they came, cleaned
    assert server.last(CHAT).body["stream"] is True


async def test_non_streamed_answer_is_cleaned(server, provider) -> None:
    server.script("m-dirty", text="<think>hidden</think>\r\n\x1b]0;title\x07fox\r\nsnow")
    result = await provider.model("m-dirty").chat(MESSAGES, temperature=0.2, max_tokens=50)
    assert result.text == "fox\nsnow"


async def test_missing_key_names_the_variable(together_config, monkeypatch) -> None:
    monkeypatch.delenv(KEY_VAR)
    provider = TogetherProvider(together_config)
    with pytest.raises(AuthenticationError) as caught:
        await provider.model("m").chat(MESSAGES, temperature=0.2, max_tokens=10)
    assert caught.value.ref == "together:m"
    assert KEY_VAR in str(caught.value)
    assert f"export {KEY_VAR}" in caught.value.fix


@pytest.mark.parametrize(
    ("script", "error", "words"),
    [
        (dict(status=401), AuthenticationError, f"${KEY_VAR}"),
        (dict(status=403), AuthenticationError, "may not use"),
        (dict(status=404), ModelNotFoundError, "no model 'm-fault'"),
        (dict(status=400, error_code="model_not_available"), ModelNotFoundError, "no model"),
        (dict(status=429, retry_after=3), RateLimitedError, "wait 3 s"),
        (dict(status=500), ProviderConnectionError, "HTTP 500"),
        (dict(status=503), ProviderConnectionError, "HTTP 503"),
        (dict(status=400, error="max_tokens too large"), ProviderError, "max_tokens too large"),
        (dict(garbage="<html>gateway</html>"), UnusableAnswerError, "could not be read"),
        (dict(text="<think>only reasoning, never an answer"), UnusableAnswerError, "only reasoning"),
        (dict(text=" \x1b[0m \r\n "), UnusableAnswerError, "empty after cleaning"),
        (dict(text=""), UnusableAnswerError, "sent an empty answer"),
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_faults_map_to_typed_errors(server, provider, script, error, words, stream) -> None:
    server.script("m-fault", **script)
    on_delta = (lambda piece: None) if stream else None
    with pytest.raises(ProviderError) as caught:
        await provider.model("m-fault").chat(MESSAGES, temperature=0.2, max_tokens=10, on_delta=on_delta)

    assert type(caught.value) is error
    assert caught.value.ref == "together:m-fault"
    assert words in str(caught.value)
    assert KEY_VALUE not in str(caught.value)
    if error is RateLimitedError:
        assert caught.value.retry_after == 3
    if error is ModelNotFoundError:
        assert "critifusion doctor" in caught.value.fix


async def test_rate_limit_then_success_after_the_clients_own_retry(server, together_config) -> None:
    together_config.max_retries = 1
    server.script("m-busy", status=429, retry_after=0.05, times=1)
    server.script("m-busy", text="fox, snow")
    provider = TogetherProvider(together_config)
    try:
        started = time.perf_counter()
        result = await provider.model("m-busy").chat(MESSAGES, temperature=0.2, max_tokens=10)
        elapsed = time.perf_counter() - started
    finally:
        await provider.aclose()

    assert result.text == "fox, snow"
    assert len(server.requests_to(CHAT)) == 2
    # The client waited the 0.05 s the server asked for, not its own 0.75-1 s back-off
    # (measured between the two requests' arrivals, so a loaded machine's set-up time does
    # not count).
    first, second = server.requests_to(CHAT)
    assert second.at - first.at < 0.6, (second.at - first.at, elapsed)


async def test_hang_past_timeout_is_a_timeout(server, together_config) -> None:
    together_config.timeout_s = 0.5
    server.script("m-hang", hang=True)
    provider = TogetherProvider(together_config)
    started = time.perf_counter()
    try:
        with pytest.raises(ProviderTimeoutError) as caught:
            await provider.model("m-hang").chat(MESSAGES, temperature=0.2, max_tokens=10)
    finally:
        await provider.aclose()
    assert 0.4 < time.perf_counter() - started < 1.5
    assert caught.value.ref == "together:m-hang"
    assert "timeout_s" in caught.value.fix


async def test_connection_refused_is_a_connection_error(together_config) -> None:
    together_config.base_url = f"http://127.0.0.1:{unused_port()}"
    provider = TogetherProvider(together_config)
    try:
        with pytest.raises(ProviderConnectionError) as caught:
            await provider.model("m").chat(MESSAGES, temperature=0.2, max_tokens=10)
    finally:
        await provider.aclose()
    assert caught.value.ref == "together:m"
    assert "cannot reach Together" in str(caught.value)


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
    assert all(r.seconds >= 0.5 for r in results)


async def test_list_models_reads_the_serverless_catalogue(server, provider) -> None:
    server.add_model("meta-llama/Llama-3.3-70B-Instruct-Turbo")
    server.add_model("Qwen/Qwen2.5-72B-Instruct-Turbo")
    names = await provider.list_models()
    assert names == ["meta-llama/Llama-3.3-70B-Instruct-Turbo", "Qwen/Qwen2.5-72B-Instruct-Turbo"]
    request = server.last("/v2/supported-models")
    assert request.query["product"] == ["PRODUCT_SERVERLESS"]


async def test_list_models_falls_back_to_v1_models(server, provider) -> None:
    server.supported_models = False
    server.add_model("deepseek-ai/DeepSeek-V3")
    assert await provider.list_models() == ["deepseek-ai/DeepSeek-V3"]
    assert server.requests_to("/v1/models")


async def test_list_models_maps_errors(provider, together_config) -> None:
    together_config.base_url = f"http://127.0.0.1:{unused_port()}"
    cold = TogetherProvider(together_config)
    with pytest.raises(ProviderConnectionError):
        await cold.list_models()
    await cold.aclose()


def test_api_root_drops_a_v1_suffix() -> None:
    assert api_root("") is None
    assert api_root("https://api.together.xyz/v1/") == "https://api.together.xyz"
    assert api_root("http://127.0.0.1:9/") == "http://127.0.0.1:9"


async def test_an_error_in_on_delta_passes_through_unmapped(server, provider) -> None:
    def refuse(piece: str) -> None:
        raise ValueError("the display is gone")

    with pytest.raises(ValueError, match="the display is gone"):
        await provider.model("m").chat(MESSAGES, temperature=0.2, max_tokens=10, on_delta=refuse)


async def test_cancelling_a_call_leaves_the_client_usable(server, provider) -> None:
    server.script("m-slow", delay=5, times=1)
    task = asyncio.create_task(provider.model("m-slow").chat(MESSAGES, temperature=0.2, max_tokens=10))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    result = await provider.model("m-slow").chat(MESSAGES, temperature=0.2, max_tokens=10)
    assert result.text == "reply from m-slow"

"""The OpenAI-compatible backend: the real ``openai`` client against the loopback server.

The loopback server's ``/openai/v1`` speaks what vLLM, llama.cpp's server, LM Studio and TGI
speak; ``refuse_schema`` makes it refuse constrained output as servers without it do.
"""

from __future__ import annotations

import base64
import time

import pytest

from critifusion_tui.config import OpenAIConfig, ProvidersConfig, Settings
from critifusion_tui.engine.answers import COMPONENTS_SCHEMA
from critifusion_tui.providers.base import (
    AuthenticationError,
    ModelNotFoundError,
    ProviderConnectionError,
    ProviderTimeoutError,
    RateLimitedError,
    UnusableAnswerError,
    system,
    user,
)
from critifusion_tui.providers.ollama import OllamaProvider
from critifusion_tui.providers.openai import NO_KEY, OpenAIProvider
from critifusion_tui.providers.router import ProviderRouter
from tests.loopback import KEY_VALUE, KEY_VAR, PNG_1PX, unused_port

CHAT = "/openai/v1/chat/completions"
MESSAGES = [system("You expand prompts into SDXL tags."), user("a red fox in snow")]


@pytest.fixture
def openai_config(server) -> OpenAIConfig:
    return OpenAIConfig(base_url=server.openai_url, api_key_env="", timeout_s=2.0, max_retries=0)


@pytest.fixture
async def provider(openai_config):
    provider = OpenAIProvider(openai_config)
    yield provider
    await provider.aclose()


async def test_request_body_answer_and_no_key_for_a_local_server(server, provider, monkeypatch) -> None:
    # A key in the usual variable must not be picked up behind the config's back.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-should-never-be-sent")
    server.script("qwen2.5-0.5b", text="fox, snow, golden hour")
    result = await provider.model("qwen2.5-0.5b").chat(MESSAGES, temperature=0.7, max_tokens=220)

    assert result.text == "fox, snow, golden hour"
    assert str(result.model) == "openai:qwen2.5-0.5b" and result.output == "free"
    request = server.last(CHAT)
    assert request.headers["authorization"] == f"Bearer {NO_KEY}"
    assert request.body["model"] == "qwen2.5-0.5b"
    assert (request.body["temperature"], request.body["max_tokens"]) == (0.7, 220)
    assert request.body["messages"] == [
        {"role": "system", "content": "You expand prompts into SDXL tags."},
        {"role": "user", "content": "a red fox in snow"},
    ]
    assert "response_format" not in request.body


async def test_a_configured_key_is_sent_and_a_missing_one_named(server, openai_config, monkeypatch) -> None:
    monkeypatch.setenv(KEY_VAR, KEY_VALUE)
    provider = OpenAIProvider(openai_config.model_copy(update={"api_key_env": KEY_VAR}))
    await provider.model("m").chat(MESSAGES, temperature=0.2, max_tokens=10)
    assert server.last(CHAT).headers["authorization"] == f"Bearer {KEY_VALUE}"
    await provider.aclose()

    monkeypatch.delenv(KEY_VAR)
    provider = OpenAIProvider(openai_config.model_copy(update={"api_key_env": KEY_VAR}))
    with pytest.raises(AuthenticationError) as caught:
        await provider.model("m").chat(MESSAGES, temperature=0.2, max_tokens=10)
    assert KEY_VAR in str(caught.value) and len(server.requests_to(CHAT)) == 1  # nothing sent


async def test_streaming_image_and_hygiene(server, provider) -> None:
    server.script("vlm", chunks=["<think>hidden</think>\x1b[31mred", " fox", ", snow"])
    pieces: list[str] = []
    result = await provider.model("vlm").chat(
        MESSAGES, temperature=0.2, max_tokens=420, image=PNG_1PX, on_delta=pieces.append
    )
    assert result.text == "red fox, snow" == "".join(pieces)
    body = server.last(CHAT).body
    assert body["stream"] is True
    parts = body["messages"][1]["content"]
    (image,) = [p for p in parts if p["type"] == "image_url"]
    assert base64.b64decode(image["image_url"]["url"].split(",", 1)[1]) == PNG_1PX


async def test_constrained_output_is_asked_and_recorded(server, provider) -> None:
    server.script("m", text='{"components": ["a red fox", "snow", "a pine"]}')
    result = await provider.model("m").chat(MESSAGES, temperature=0.4, max_tokens=256, schema=COMPONENTS_SCHEMA)
    assert result.output == "json_schema"
    asked = server.last(CHAT).body["response_format"]
    assert asked == {"type": "json_schema", "json_schema": {"name": "answer", "schema": COMPONENTS_SCHEMA}}


async def test_a_server_refusing_json_schema_gets_free_text_silently(server, provider) -> None:
    server.refuse_schema = True
    server.script("m", text='{"components": ["a red fox"]}')
    pieces: list[str] = []
    result = await provider.model("m").chat(
        MESSAGES, temperature=0.4, max_tokens=256, schema=COMPONENTS_SCHEMA, on_delta=pieces.append
    )
    assert result.text == '{"components": ["a red fox"]}' and result.output == "free (json_schema refused)"
    first, second = server.requests_to(CHAT)
    assert "response_format" in first.body and "response_format" not in second.body
    # Remembered: the next call goes straight to free text, one request.
    await provider.model("m").chat(MESSAGES, temperature=0.4, max_tokens=256, schema=COMPONENTS_SCHEMA)
    assert len(server.requests_to(CHAT)) == 3


async def test_ollama_format_schema_and_its_fallback(server, ollama_config) -> None:
    provider = OllamaProvider(ollama_config)
    result = await provider.model("qwen").chat(MESSAGES, temperature=0.4, max_tokens=256, schema=COMPONENTS_SCHEMA)
    assert result.output == "json_schema"
    assert server.last("/api/chat").body["format"] == COMPONENTS_SCHEMA
    server.refuse_schema = True
    result = await provider.model("old").chat(MESSAGES, temperature=0.4, max_tokens=256, schema=COMPONENTS_SCHEMA)
    assert result.output == "free (json_schema refused)"
    assert "format" not in server.last("/api/chat").body
    await provider.aclose()


@pytest.mark.parametrize(
    ("script", "error", "words"),
    [
        (dict(status=401), AuthenticationError, "HTTP 401"),
        (dict(status=404), ModelNotFoundError, "has no model 'm'"),
        (dict(status=429, retry_after=0), RateLimitedError, "HTTP 429"),
        (dict(status=500), ProviderConnectionError, "HTTP 500"),
        (dict(hang=True), ProviderTimeoutError, "within 0.5 s"),
        (dict(garbage="<html>bad gateway</html>"), UnusableAnswerError, "could not be read"),
    ],
)
async def test_errors_are_mapped_for_the_person_who_acts(server, openai_config, script, error, words) -> None:
    provider = OpenAIProvider(openai_config.model_copy(update={"timeout_s": 0.5}))
    server.script("m", **script)
    started = time.perf_counter()
    with pytest.raises(error) as caught:
        await provider.model("m").chat(MESSAGES, temperature=0.2, max_tokens=10)
    assert words in str(caught.value) and "openai:m" in str(caught.value)
    assert time.perf_counter() - started < 2
    await provider.aclose()


async def test_a_server_that_is_down_is_named(server) -> None:
    url = f"http://127.0.0.1:{unused_port()}/v1"
    provider = OpenAIProvider(OpenAIConfig(base_url=url, timeout_s=1.0, max_retries=0))
    with pytest.raises(ProviderConnectionError, match=f"cannot reach the server at {url}"):
        await provider.model("m").chat(MESSAGES, temperature=0.2, max_tokens=10)
    await provider.aclose()


async def test_model_list_is_the_servers_own(server, provider) -> None:
    server.add_model("Qwen/Qwen2.5-0.5B-Instruct")
    server.add_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert await provider.list_models() == ["Qwen/Qwen2.5-0.5B-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"]
    assert server.requests_to("/openai/v1/models")


async def test_critcore_stages_through_openai_ask_for_json_and_record_it(server, openai_config) -> None:
    from critifusion_tui.engine.criticore import CritiCore

    settings = Settings(providers=ProvidersConfig(openai=openai_config))
    router = ProviderRouter(settings)
    core = CritiCore(router, candidates=["openai:a", "openai:b"], aggregator=["openai:agg"], vlms=["openai:v"])
    server.script("a", text='{"components": ["a red fox", "snow"]}')
    server.script("b", text='{"components": ["a pine tree", "snow"]}')
    server.script("agg", text='{"components": ["a red fox", "snow", "a pine tree"]}')
    result = await core.components("a red fox in snow by a pine")
    assert result.components == ["a red fox", "snow", "a pine tree"]
    assert all(a.output == "json_schema" for a in result.candidates + result.aggregator)
    assert result.record()["candidates"][0]["output"] == "json_schema"
    assert all("response_format" in r.body for r in server.requests_to(CHAT))
    # The critique asks for JSON too, and a JSON critique is read like the tagged one.
    server.script("v", text='{"issues": ["the fox is grey"], "refined": "a red fox in white snow"}')
    critique = await core.critique(PNG_1PX, "a red fox in snow", result.components)
    assert critique.refined == "a red fox in white snow" and critique.issues == ["the fox is grey"]
    await router.aclose()

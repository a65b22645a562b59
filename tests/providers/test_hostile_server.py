"""A hostile or broken server, through the real clients: it echoes the key in its errors,
drips an answer for ever, sends far too much, or lists model names full of escapes."""

from __future__ import annotations

import time

import pytest

from critifusion_tui.config import OpenAIConfig, ProvidersConfig, Settings
from critifusion_tui.providers.base import ProviderError, ProviderTimeoutError, user
from critifusion_tui.providers.bounded import answer_cap
from critifusion_tui.providers.router import ProviderRouter
from critifusion_tui.redact import redact, strip_userinfo
from tests.loopback import KEY_VALUE, KEY_VAR

OLLAMA_KEY = "ollama-secret-key-7777"


@pytest.fixture
def hostile(settings, server, monkeypatch) -> Settings:
    """Every provider on the loopback server, each sending a key it may have echoed back."""
    monkeypatch.setenv("OLLAMA_API_KEY", OLLAMA_KEY)  # the ollama client sends it as a bearer token
    openai = OpenAIConfig(base_url=server.openai_url, api_key_env=KEY_VAR, timeout_s=2.0, max_retries=0)
    providers = ProvidersConfig(together=settings.providers.together, ollama=settings.providers.ollama, openai=openai)
    return Settings(providers=providers)


# (status, streamed): an HTTP error to a streamed or a whole request, or an error mid-stream.
ECHO_CASES = [(400, True), (400, False), (500, True), (500, False), (None, True)]


@pytest.mark.parametrize("provider", ["together", "ollama", "openai"])
@pytest.mark.parametrize(
    "status, streamed", ECHO_CASES, ids=["400-streamed", "400-whole", "500-streamed", "500-whole", "mid-stream"]
)
async def test_a_key_echoed_in_an_error_body_never_reaches_the_message(hostile, server, provider, status, streamed):
    server.script("echo", echo_auth=True, status=status)
    async with ProviderRouter(hostile) as router:
        model = router.model(f"{provider}:echo")
        chat = model.inner if not streamed else model  # the bare backend answers unstreamed
        with pytest.raises(ProviderError) as caught:
            await chat.chat([user("hi")], temperature=0.2, max_tokens=50)
    sent = server.last().headers.get("authorization", "")
    secret = OLLAMA_KEY if provider == "ollama" else KEY_VALUE
    assert secret in sent  # the server did have the key to echo
    message = str(caught.value)
    assert secret not in message and "***" in message, message


async def test_timeout_bounds_the_whole_streamed_answer(settings, server):
    # One chunk every 0.3 s keeps each read short; the answer as a whole must still end.
    server.script("drip", chunks=["tag, "] * 100, chunk_delay=0.3)
    settings.providers.together.timeout_s = 1.0
    async with ProviderRouter(settings) as router:
        started = time.perf_counter()
        with pytest.raises(ProviderTimeoutError, match="no complete answer within 1 s"):
            await router.model("together:drip").chat(
                [user("hi")], temperature=0.2, max_tokens=50, on_delta=lambda p: None
            )
        assert time.perf_counter() - started < 2.5


@pytest.mark.parametrize("provider", ["together", "ollama"])
async def test_a_huge_answer_is_cut_at_the_cap_and_flagged(settings, server, provider):
    big = "word, " * 200_000  # 1.2 MB
    server.script("big", chunks=[big[i : i + 60_000] for i in range(0, len(big), 60_000)])
    seen: list[str] = []
    async with ProviderRouter(settings) as router:
        result = await router.model(f"{provider}:big").chat(
            [user("hi")], temperature=0.2, max_tokens=64, on_delta=seen.append
        )
    assert result.truncated is True
    assert len(result.text) <= answer_cap(64) and len(result.text) > answer_cap(64) - 10
    assert sum(map(len, seen)) <= answer_cap(64)


async def test_a_normal_answer_is_not_flagged(settings, server):
    async with ProviderRouter(settings) as router:
        result = await router.model("together:a").chat(
            [user("hi")], temperature=0.2, max_tokens=5, on_delta=lambda p: None
        )
    assert result.text == "reply from a" and result.truncated is False


def test_redact_covers_keys_bearer_tokens_and_url_credentials(monkeypatch):
    from critifusion_tui import redact as module

    monkeypatch.setenv("SOME_KEY_VAR", "k-123456789")
    module.remember_env(["SOME_KEY_VAR"])
    text = (
        'failed: {"authorization": "Bearer abcdefghijkl"} key k-123456789 at http://user:pw@host:1/v1 '
        "X-Api-Key: zzzzzzzz"
    )
    clean = redact(text)
    for secret in ("abcdefghijkl", "k-123456789", "user:pw", "zzzzzzzz"):
        assert secret not in clean
    assert "http://***@host:1/v1" in clean
    assert strip_userinfo("http://user:pw@host:1/v1") == "http://host:1/v1"
    assert redact("the token limit was exceeded") == "the token limit was exceeded"

"""Shared pieces: messages, errors, name suggestions."""

from __future__ import annotations

import pytest

from critifusion_tui.providers.base import (
    AuthenticationError,
    Message,
    ModelRef,
    ProviderError,
    RateLimitedError,
    UnusableAnswerError,
    as_messages,
    closest_names,
    last_user_index,
    short_detail,
)


def test_error_carries_ref_message_and_fix() -> None:
    err = AuthenticationError(ModelRef("together", "m"), "no API key", fix="export TOGETHER_API_KEY=<key>")
    assert err.ref == "together:m"
    assert str(err) == "together:m: no API key; export TOGETHER_API_KEY=<key>"
    assert isinstance(err, ProviderError) and err.code == "authentication"
    assert str(UnusableAnswerError("ollama:x", "empty")) == "ollama:x: empty"
    assert RateLimitedError("together:m", "slow", retry_after=2.5).retry_after == 2.5


def test_error_codes_are_distinct() -> None:
    from critifusion_tui.engine.replay import ReplayError  # a replayed failure is one too

    codes = {cls.code for cls in [ProviderError, *ProviderError.__subclasses__()]}
    assert ReplayError in ProviderError.__subclasses__()
    assert len(codes) == 1 + len(ProviderError.__subclasses__()) == 8


def test_short_detail_cleans_server_text() -> None:
    assert short_detail("bad\x1b[31m  request\r\n") == "bad request"
    assert len(short_detail("x" * 500)) == 200


def test_messages_from_mappings_and_image_target() -> None:
    turns = as_messages([{"role": "system", "content": "s"}, Message("user", "u"), {"role": "user", "content": "v"}])
    assert last_user_index(turns) == 2
    with pytest.raises(ValueError, match="user message"):
        last_user_index([Message("system", "s")])
    with pytest.raises(ValueError):
        as_messages([])


def test_closest_names() -> None:
    available = [
        "meta-llama/Llama-3.3-70B-Instruct-Turbo",
        "meta-llama/Llama-3.1-8B-Instruct-Turbo",
        "Qwen/Qwen2.5-72B-Instruct-Turbo",
        "deepseek-ai/DeepSeek-V3",
    ]
    assert closest_names("meta-llama/Llama-3.3-70B-Instruct", available)[0] == available[0]
    # The wrong organisation still finds the model by the part after "/".
    assert closest_names("meta/llama-3.3-70b-instruct-turbo", available)[0] == available[0]
    assert closest_names("deepseek-ai/DeepSeek-V2", available, n=1) == ["deepseek-ai/DeepSeek-V3"]
    assert closest_names("zzzz", available) == []
    assert len(closest_names("meta-llama/Llama", available, n=2)) <= 2

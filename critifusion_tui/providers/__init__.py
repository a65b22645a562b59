"""Chat backends (Together, Ollama, any OpenAI-compatible server) behind one interface.

The engine needs only what is re-exported here: a :class:`ProviderRouter` to turn model
references into :class:`ChatModel` objects, the messages and result types, the typed errors,
and the text hygiene every answer passes through. The client libraries themselves load on
first use (see ``together.py``, ``ollama.py`` and ``openai.py``), so importing this package
stays cheap. The offline ``rules`` model is the engine's (``engine/offline.py``), registered
on the router by the engine.
"""

from critifusion_tui.providers.base import (
    AuthenticationError,
    ChatModel,
    ChatResult,
    Message,
    ModelNotFoundError,
    ModelRef,
    ModelRefError,
    ProviderConnectionError,
    ProviderError,
    ProviderTimeoutError,
    RateLimitedError,
    UnusableAnswerError,
    closest_names,
    system,
    user,
)
from critifusion_tui.providers.hygiene import StreamCleaner, clean_model_text
from critifusion_tui.providers.router import ProviderRouter

__all__ = [
    "AuthenticationError",
    "ChatModel",
    "ChatResult",
    "Message",
    "ModelNotFoundError",
    "ModelRef",
    "ModelRefError",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderRouter",
    "ProviderTimeoutError",
    "RateLimitedError",
    "StreamCleaner",
    "UnusableAnswerError",
    "clean_model_text",
    "closest_names",
    "system",
    "user",
]

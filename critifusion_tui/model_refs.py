"""Model references (``together:<model id>``, ``ollama:<name>``, ``openai:<id>``, ``rules``):
how the configuration, the engine and the providers name a chat model.

A leaf: it imports only the standard library, so the configuration can check a reference
without importing the providers, and any layer may import it. ``HOSTED`` is the one list a
new hosted backend is added to (the router imports the named class when first needed).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

# The hosted backends, by provider name: the provider part of a reference and the
# ``[providers.<name>]`` section of its settings, mapped to its HostedProvider class as
# ``module:Class`` (imported only when a router first needs it).
HOSTED: dict[str, str] = {
    "together": "critifusion_tui.providers.together:TogetherProvider",
    "ollama": "critifusion_tui.providers.ollama:OllamaProvider",
    "openai": "critifusion_tui.providers.openai:OpenAIProvider",
}

# Every provider part a model reference may name: the hosted backends, and the offline
# ``rules`` (the engine's, registered on the router by the engine).
PROVIDERS = (*HOSTED, "rules")
REF_FORMS = "'together:<model id>', 'ollama:<model name>', 'openai:<model id>' or 'rules'"


class ModelRefError(ValueError):
    """A model reference that names no known provider or no model."""


@dataclass(frozen=True)
class ModelRef:
    provider: str
    name: str = ""

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """Read ``provider:name``; ``rules`` stands alone."""
        if any(unicodedata.category(ch) == "Cc" and ch not in "\n\t" for ch in text):
            # A terminal escape in a model name would reach the screen and every log.
            raise ModelRefError(f"{ascii(text)} holds control characters; a model reference is plain text")
        ref = text.strip()
        if ref == "rules":
            return cls("rules")
        provider, sep, name = ref.partition(":")
        if not sep:
            raise ModelRefError(f"{text!r} names no provider; expected {REF_FORMS}")
        if provider not in PROVIDERS or provider == "rules":
            raise ModelRefError(f"unknown provider {provider!r} in {text!r}; expected {REF_FORMS}")
        if not name.strip():
            raise ModelRefError(f"{text!r} names no model; expected {REF_FORMS}")
        return cls(provider, name.strip())

    def __str__(self) -> str:
        return self.provider if self.provider == "rules" else f"{self.provider}:{self.name}"

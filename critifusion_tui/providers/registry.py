"""The hosted backends, by provider name: the one list a new backend is added to.

The name is the provider part of a model reference (``together:<model id>``) and the
``[providers.<name>]`` section its settings come from; the value names the backend's
:class:`~critifusion_tui.providers.chat.HostedProvider` as ``module:Class``, imported when a
router first needs it. Models that are not hosted (the engine's offline ``rules``) are
registered on the router itself (``ProviderRouter.register``).

This module imports nothing, so ``base.py`` can read the names without importing a backend.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from critifusion_tui.providers.chat import HostedProvider

HOSTED: dict[str, str] = {
    "together": "critifusion_tui.providers.together:TogetherProvider",
    "ollama": "critifusion_tui.providers.ollama:OllamaProvider",
    "openai": "critifusion_tui.providers.openai:OpenAIProvider",
}


def provider_class(name: str) -> type[HostedProvider[Any]]:
    """The provider class of the hosted backend ``name`` (a KeyError for another name)."""
    module, _, attribute = HOSTED[name].partition(":")
    return getattr(importlib.import_module(module), attribute)

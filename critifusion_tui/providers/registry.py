"""The hosted backends, by provider name: the one list a new backend is added to.

The name is the provider part of a model reference (``together:<model id>``) and the
``[providers.<name>]`` section its settings come from; the value names the backend's
:class:`~critifusion_tui.providers.chat.HostedProvider` as ``module:Class``, imported when a
router first needs it. Models that are not hosted (the engine's offline ``rules``) are
registered on the router itself (``ProviderRouter.register``).

The list itself is ``critifusion_tui.model_refs.HOSTED`` (a leaf the configuration reads too).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from critifusion_tui.model_refs import HOSTED  # the list itself lives with the references (a leaf)

if TYPE_CHECKING:
    from critifusion_tui.providers.chat import HostedProvider

__all__ = ["HOSTED", "provider_class"]


def provider_class(name: str) -> type[HostedProvider[Any]]:
    """The provider class of the hosted backend ``name`` (a KeyError for another name)."""
    module, _, attribute = HOSTED[name].partition(":")
    return getattr(importlib.import_module(module), attribute)

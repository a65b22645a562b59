"""Fixtures for tests that run the `critifusion` command in a subprocess."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def env(tmp_path):
    """A clean environment: no config anywhere, no keys, offline hub."""
    environ = {
        k: v for k, v in os.environ.items() if k not in ("CRITIFUSION_CONFIG", "TOGETHER_API_KEY", "OLLAMA_HOST")
    }
    environ.update(XDG_CONFIG_HOME=str(tmp_path / "xdg"), HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    return environ

"""Shared test setup: no test reaches the network.

Every test runs behind a guard that lets sockets reach only the loopback interface
(127.0.0.0/8, ::1, "localhost") and unix sockets. Anything else fails twice over: the
connection raises :class:`NetworkBlockedError` at once, and the test fails at teardown even
when some client caught and wrapped that error (an HTTP client turning it into "connection
error" must not let a test pass that was about to talk to the internet).

The environment is made offline too: ``HF_HUB_OFFLINE=1``, and no provider key or host
leaks in from the developer's shell.
"""

from __future__ import annotations

import ipaddress
import socket

import pytest

from critifusion_tui.config import OllamaConfig, ProvidersConfig, Settings, TogetherConfig
from tests.loopback import KEY_VALUE, KEY_VAR, LoopbackServer

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
# Variables that would point a client at a real service or a real account.
SCRUBBED_ENV = (
    "TOGETHER_API_KEY",
    "TOGETHER_BASE_URL",
    "OLLAMA_HOST",
    "OLLAMA_API_KEY",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)


class NetworkBlockedError(OSError):
    """A test tried to reach a host other than this machine."""


def _is_local_host(host: object) -> bool:
    if host is None:
        return True  # getaddrinfo(None, ...) resolves to a local wildcard address
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    text = str(host).strip("[]").split("%", 1)[0].lower()
    if text in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


class NetworkGuard:
    """Records the blocked attempts of one test."""

    def __init__(self) -> None:
        self.blocked: list[str] = []

    def check(self, family: object, address: object) -> None:
        if family == getattr(socket, "AF_UNIX", object()) or isinstance(address, (str, bytes)):
            return  # a unix socket path never leaves the machine
        host = address[0] if isinstance(address, tuple) and address else address
        if not _is_local_host(host):
            self.blocked.append(repr(address))
            raise NetworkBlockedError(f"network access blocked in tests: {address!r}")

    def check_name(self, host: object) -> None:
        if not _is_local_host(host):
            self.blocked.append(repr(host))
            raise NetworkBlockedError(f"name lookup blocked in tests: {host!r}")


_session_dirs: dict[str, object] = {}


@pytest.fixture(autouse=True, scope="session")
def _isolated_caches(tmp_path_factory: pytest.TempPathFactory):
    _session_dirs["hub"] = tmp_path_factory.mktemp("empty-hub-cache")
    _session_dirs["cache"] = tmp_path_factory.mktemp("user-cache")


@pytest.fixture(autouse=True)
def network_guard(_isolated_caches, monkeypatch: pytest.MonkeyPatch):
    """Loopback only, offline environment; fails the test if anything tried to get out."""
    guard = NetworkGuard()
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address, *args, **kwargs):
        guard.check(self.family, address)
        return real_connect(self, address, *args, **kwargs)

    def connect_ex(self: socket.socket, address, *args, **kwargs):
        guard.check(self.family, address)
        return real_connect_ex(self, address, *args, **kwargs)

    def getaddrinfo(host, *args, **kwargs):
        guard.check_name(host)
        return real_getaddrinfo(host, *args, **kwargs)

    # Patching the class catches sync sockets, socket.create_connection and asyncio alike
    # (asyncio's sock_connect calls sock.connect); patching getaddrinfo stops DNS lookups.
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # The developer's own model caches must not decide a test: an empty hub cache, and a
    # user cache (built-in single-file configs are written there) shared by the session.
    monkeypatch.setenv("HF_HUB_CACHE", str(_session_dirs["hub"]))
    monkeypatch.setenv("XDG_CACHE_HOME", str(_session_dirs["cache"]))
    for name in SCRUBBED_ENV:
        monkeypatch.delenv(name, raising=False)

    yield guard

    if guard.blocked:
        attempts = ", ".join(guard.blocked)
        guard.blocked.clear()
        pytest.fail(f"test tried to reach the network: {attempts}", pytrace=False)


# --- The loopback provider server and settings that point the real clients at it ----------


@pytest.fixture
def server():
    with LoopbackServer() as running:
        yield running


@pytest.fixture
def together_config(server, monkeypatch) -> TogetherConfig:
    """Together pointed at the loopback server, its key in a variable of our own naming."""
    monkeypatch.setenv(KEY_VAR, KEY_VALUE)
    return TogetherConfig(api_key_env=KEY_VAR, base_url=server.url, timeout_s=2.0, max_retries=0)


@pytest.fixture
def ollama_config(server) -> OllamaConfig:
    return OllamaConfig(host=server.url, timeout_s=2.0, keep_alive="7m")


@pytest.fixture
def settings(together_config, ollama_config) -> Settings:
    return Settings(providers=ProvidersConfig(together=together_config, ollama=ollama_config))

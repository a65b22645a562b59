"""The network guard in tests/conftest.py: loopback passes, anything else trips it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import NetworkBlockedError


def test_guard_trips_on_an_outside_address(network_guard) -> None:
    with pytest.raises(NetworkBlockedError):
        socket.create_connection(("192.0.2.1", 80), timeout=0.1)  # TEST-NET-1, never routed
    with pytest.raises(NetworkBlockedError):
        socket.getaddrinfo("example.com", 443)
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    with pytest.raises(NetworkBlockedError):
        sock.connect_ex(("2001:db8::1", 80, 0, 0))
    sock.close()
    assert len(network_guard.blocked) == 3
    network_guard.blocked.clear()  # else the guard fails this test at teardown, as it should


def test_guard_fails_a_test_even_when_the_error_is_swallowed(tmp_path) -> None:
    # A separate pytest run, with the same conftest, of a test that hides the attempt.
    shutil.copy(Path(__file__).parents[1] / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_sneaky.py").write_text(
        "import socket\n"
        "def test_sneaky():\n"
        "    try:\n"
        "        socket.create_connection(('192.0.2.1', 80), timeout=0.1)\n"
        "    except OSError:\n"
        "        pass  # a client that wraps the error must not hide the attempt\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        # The copied conftest imports the shared loopback fixtures from the tests package.
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "1 passed, 1 error" in run.stdout
    assert "test tried to reach the network" in run.stdout and "192.0.2.1" in run.stdout


def test_loopback_and_environment(server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=1):
        pass
    with socket.create_connection(("localhost", server.port), timeout=1):
        pass
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert "TOGETHER_API_KEY" not in os.environ
    assert "OLLAMA_HOST" not in os.environ

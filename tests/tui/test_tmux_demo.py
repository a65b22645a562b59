"""The real `critifusion --demo` in tmux, driven with send-keys and read with capture-pane,
the way a person over SSH would use it: ctrl+r through every stage to the finished screen."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


class Tmux:
    def __init__(self, socket: Path, session: str) -> None:
        self.base = ["tmux", "-S", str(socket)]
        self.session = session

    def __call__(self, *args: str) -> str:
        return subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=10).stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", self.session)

    def wait_for(self, text: str, timeout: float = 90.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.2)
        raise AssertionError(f"{text!r} never appeared; the screen shows:\n{self.screen()}")


@pytest.fixture
def tmux(tmp_path):
    driver = Tmux(tmp_path / "tmux.sock", "demo")
    yield driver
    driver("kill-server")


def test_demo_in_tmux_from_prompt_to_refined_image(tmux, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TMUX")}
    env.update(COLORTERM="truecolor", TERM="xterm-256color", XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    command = f"{sys.executable} -m critifusion_tui --demo 'a red fox in a forest'"
    subprocess.run(
        [*tmux.base, "new-session", "-d", "-s", "demo", "-x", "80", "-y", "24", "-c", str(tmp_path), command],
        env=env,
        check=True,
        timeout=10,
    )
    first = tmux.wait_for("Type a prompt, then ctrl+r")
    assert "a red fox in a forest" in first and "tiny-random" in first

    tmux("send-keys", "-t", "demo", "C-r")
    tmux.wait_for("Edit tags")
    at_tags = tmux.wait_for("CLIP tokens")  # the gate scrolls its editor into view
    assert "Positive prompt" in at_tags

    tmux("send-keys", "-t", "demo", "C-r")
    tmux.wait_for("Edit the refinement prompt")
    tmux.wait_for("Refinement prompt")

    tmux("send-keys", "-t", "demo", "C-r")
    done = tmux.wait_for("Done. ctrl+r: a new run")
    assert "tiny-random: noise" in done and "Refined" in done

    tmux("send-keys", "-t", "demo", "C-q")
    deadline = time.monotonic() + 15
    while "demo" in tmux("list-sessions") and time.monotonic() < deadline:
        time.sleep(0.2)
    runs = list((tmp_path / "outputs").iterdir())
    assert len(runs) == 1
    manifest = json.loads((runs[0] / "manifest.json").read_text())
    assert manifest["status"] == "done" and (runs[0] / "refined.png").is_file()

"""Which image protocol the terminal really draws: the replies read, the decision and its
reason, the probe against a terminal on a pseudo-terminal, and the command line refusing a
forced protocol the terminal lacks."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from critifusion_tui.graphics import (
    DA1_QUERY,
    KITTY_QUERY,
    XTVERSION_QUERY,
    Probe,
    decide,
    parse_replies,
    probe_terminal,
)

# Replies as the terminals send them (xterm's DA1 with -ti vt340 lists 4: Sixel).
KITTY_026 = "\x1bP>|kitty(0.26.5)\x1b\\" + "\x1b_Gi=4243;OK\x1b\\" + "\x1b[?62;c"
KITTY_035 = "\x1bP>|kitty(0.35.2)\x1b\\" + "\x1b_Gi=4243;OK\x1b\\" + "\x1b[?62;c"
XTERM_VT340 = "\x1bP>|XTerm(379)\x1b\\" + "\x1b[?63;1;2;4;6;9;15;16;22;28c"
XTERM = "\x1bP>|XTerm(379)\x1b\\" + "\x1b[?64;1;2;6;9;15;16;22;28c"
TMUX = "\x1bP>|tmux 3.3a\x1b\\" + "\x1b[?1;2c"
WEZTERM = "\x1bP>|WezTerm 20240203-110809-5046fc22\x1b\\" + "\x1b_Gi=4243;OK\x1b\\" + "\x1b[?65;4;6;18;22c"
KONSOLE_NO_SIXEL = "\x1b_Gi=4243;OK\x1b\\" + "\x1b[?62;c"
NO_ENV: dict[str, str] = {}


def test_replies_are_read_in_any_order_among_other_input():
    probe = parse_replies("x" + KITTY_026[::1])
    assert (probe.answered, probe.sixel, probe.kitty_graphics) == (True, False, True)
    assert (probe.terminal, probe.version, probe.version_tuple) == ("kitty", "0.26.5", (0, 26, 5))
    assert parse_replies(XTERM_VT340).sixel and not parse_replies(XTERM).sixel
    assert parse_replies(TMUX).who == "tmux 3.3a"
    assert not parse_replies("\x1b_Gi=4243;ENOENT:no such file\x1b\\\x1b[?62;c").kitty_graphics
    assert parse_replies("").answered is False


@pytest.mark.parametrize(
    "replies, env, mode, says",
    [
        (
            KITTY_026,
            NO_ENV,
            "halfblock",
            "kitty 0.26.5 cannot draw kitty graphics' Unicode placeholders (they need kitty 0.28 or newer; upgrade it)",
        ),
        (KITTY_035, NO_ENV, "kitty", "kitty 0.35.2 draws kitty graphics"),
        (XTERM_VT340, NO_ENV, "sixel", "xterm 379 lists Sixel in its device attributes"),
        (XTERM, NO_ENV, "halfblock", "xterm 379 reports neither Sixel nor kitty graphics"),
        (TMUX, NO_ENV, "halfblock", "tmux 3.3a reports neither Sixel nor kitty graphics"),
        (WEZTERM, NO_ENV, "sixel", "wezterm 20240203-110809-5046fc22 lists Sixel"),
        (KONSOLE_NO_SIXEL, NO_ENV, "halfblock", "the terminal did not say which it is"),
        # No XTVERSION: the environment names the terminal (TERM_PROGRAM_VERSION).
        (
            "\x1b_Gi=4243;OK\x1b\\\x1b[?62;c",
            {"TERM_PROGRAM": "kitty", "TERM_PROGRAM_VERSION": "0.26.5"},
            "halfblock",
            "kitty 0.26.5 cannot draw",
        ),
        (
            "\x1b_Gi=4243;OK\x1b\\\x1b[?62;c",
            {"KITTY_WINDOW_ID": "1"},
            "halfblock",
            "kitty did not say its version (kitty 0.28 or newer draws them); --images kitty forces them",
        ),
        (
            "\x1b_Gi=4243;OK\x1b\\\x1b[?62;c",
            {"TERM_PROGRAM": "ghostty", "TERM_PROGRAM_VERSION": "1.1.3"},
            "kitty",
            "ghostty 1.1.3 draws kitty graphics",
        ),
        ("", NO_ENV, "halfblock", "the terminal did not answer the graphics queries"),
    ],
    ids=[
        "kitty-0.26",
        "kitty-0.35",
        "xterm-vt340",
        "xterm",
        "tmux",
        "wezterm",
        "unnamed-tgp",
        "env-version",
        "env-kitty-no-version",
        "ghostty",
        "no-answer",
    ],
)
def test_auto_picks_what_the_terminal_really_draws(replies, env, mode, says):
    decision = decide("auto", parse_replies(replies), env)
    assert decision.mode == mode
    assert says in decision.reason
    assert not decision.refused


def test_xtversion_outranks_the_environment():
    # An old TERM_PROGRAM inherited from the machine SSH started from says nothing of this one.
    decision = decide("auto", parse_replies(KITTY_035), {"TERM_PROGRAM": "kitty", "TERM_PROGRAM_VERSION": "0.20"})
    assert decision.mode == "kitty"


@pytest.mark.parametrize(
    "requested, replies, mode, refused",
    [
        ("sixel", XTERM, "halfblock", "xterm 379 does not list Sixel in its device attributes"),
        ("sixel", XTERM_VT340, "sixel", ""),
        ("kitty", KITTY_026, "halfblock", "kitty 0.26.5 cannot draw kitty graphics' Unicode placeholders"),
        ("kitty", XTERM_VT340, "halfblock", "xterm 379 did not answer the kitty graphics query"),
        ("kitty", KONSOLE_NO_SIXEL, "kitty", ""),  # answered OK, name unknown: forced, so tried
        ("sixel", "", "sixel", ""),  # no answer at all: forced, used unverified
        ("halfblock", KITTY_035, "halfblock", ""),
        ("none", XTERM, "none", ""),
    ],
)
def test_a_forced_protocol_the_terminal_lacks_is_refused_with_the_reason(requested, replies, mode, refused):
    decision = decide(requested, parse_replies(replies), NO_ENV)
    assert decision.mode == mode
    assert decision.refused.startswith(refused) and bool(decision.refused) == bool(refused)
    if not replies and requested == "sixel":
        assert "not verified" in decision.reason


# ------------------------------------------------------------------------------------------
# A terminal on the master side of a pseudo-terminal: it answers the queries it reads.


class FakeTerminal:
    def __init__(self, replies: str, delay: float = 0.0) -> None:
        self.master, self.slave = os.openpty()
        self.replies = replies
        self.delay = delay
        self.seen = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:
                return
            if not chunk:
                return
            self.seen += chunk
            if DA1_QUERY.encode() in self.seen and self.replies:
                time.sleep(self.delay)
                os.write(self.master, self.replies.encode())
                self.replies = ""

    def output(self, timeout: float = 5.0) -> str:
        """What the program wrote to the terminal until it closed its side."""
        self.thread.join(timeout)
        return self.seen.decode("utf-8", "replace")

    def close(self) -> None:
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
def terminal():
    made: list[FakeTerminal] = []

    def make(replies: str, delay: float = 0.0) -> FakeTerminal:
        made.append(FakeTerminal(replies, delay))
        return made[-1]

    yield make
    for fake in made:
        fake.close()


def test_probe_asks_once_and_reads_the_answers(terminal):
    fake = terminal(KITTY_026)
    probe = probe_terminal(fake.slave, fake.slave, timeout=5.0)
    assert probe == Probe(True, False, True, "kitty", "0.26.5", "XTVERSION", "")
    assert fake.seen.decode() == XTVERSION_QUERY + KITTY_QUERY + DA1_QUERY


def test_a_slow_answer_within_the_timeout_counts(terminal):
    fake = terminal(XTERM_VT340, delay=0.3)
    assert probe_terminal(fake.slave, fake.slave, timeout=2.0).sixel


def test_no_answer_is_a_timeout_and_half_blocks(terminal):
    fake = terminal("")  # a terminal (or a link) that never answers
    started = time.monotonic()
    probe = probe_terminal(fake.slave, fake.slave, timeout=0.3)
    assert 0.25 <= time.monotonic() - started < 2.0
    assert not probe.answered and probe.error == "no answer within 0.3 s"
    decision = decide("auto", probe, NO_ENV)
    assert decision.mode == "halfblock" and "no answer within 0.3 s" in decision.reason


def test_the_terminal_mode_is_restored(terminal):
    import termios

    fake = terminal(XTERM)
    before = termios.tcgetattr(fake.slave)
    probe_terminal(fake.slave, fake.slave, timeout=2.0)
    assert termios.tcgetattr(fake.slave) == before


def test_not_a_terminal(tmp_path):
    with open(tmp_path / "f", "w+") as handle:
        assert probe_terminal(handle.fileno(), handle.fileno()).error == "not a terminal"


# ------------------------------------------------------------------------------------------
# The command line, in the fake terminal.


def run_app_command(fake: FakeTerminal, *args: str, env: dict[str, str], cwd) -> int:
    proc = subprocess.Popen(
        [sys.executable, "-m", "critifusion_tui", "--demo", *args],
        stdin=fake.slave,
        stdout=fake.slave,
        stderr=fake.slave,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.fixture
def clean_env(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CRITIFUSION_CONFIG", "TERM_PROGRAM", "TERM_PROGRAM_VERSION", "KITTY_WINDOW_ID", "TMUX")
    }
    env.update(XDG_CONFIG_HOME=str(tmp_path / "xdg"), HF_HUB_OFFLINE="1", TERM="xterm-256color")
    return env


def test_images_sixel_where_the_terminal_has_none_exits_2_with_the_reason(terminal, clean_env, tmp_path):
    fake = terminal(XTERM)
    code = run_app_command(fake, "--images", "sixel", env=clean_env, cwd=tmp_path)
    os.close(fake.slave)  # the child has exited: the master then reads to the end
    out = fake.output()
    assert code == 2
    assert "--images sixel: xterm 379 does not list Sixel in its device attributes." in out
    assert "Use --images auto" in out
    assert "\x1b[?1049h" not in out  # the app never started (no alternate screen)


def test_images_kitty_in_kitty_026_exits_2_naming_the_version(terminal, clean_env, tmp_path):
    fake = terminal(KITTY_026)
    code = run_app_command(fake, "--images", "kitty", env=clean_env, cwd=tmp_path)
    os.close(fake.slave)
    assert code == 2
    assert "kitty 0.26.5 cannot draw kitty graphics' Unicode placeholders (they need kitty 0.28" in fake.output()

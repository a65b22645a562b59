"""Which inline image protocol this terminal can really draw, and why.

textual-image chooses on its own when it is imported: Sixel when the terminal's device
attributes list it, else kitty graphics when the terminal answers a kitty graphics query. The
answer is not the whole truth. textual-image draws kitty images through Unicode placeholders
(U+10EEEE cells), which kitty draws only from 0.28: kitty 0.26 (Debian 12's package) answers
the query "OK" and then shows a grid of tofu boxes. Terminals such as WezTerm and Konsole
answer it too and do not draw placeholders either. A forced Sixel in a terminal without it
prints the raw data.

So the app asks the terminal itself, once, before Textual starts (Textual's input thread would
take the replies): its name and version (XTVERSION, ``CSI > 0 q``), a kitty graphics query,
and the primary device attributes (``CSI c``, which every terminal answers, so its reply ends
the wait; its ``4`` means Sixel). Where XTVERSION is not answered the environment may name
the terminal (``TERM_PROGRAM`` / ``TERM_PROGRAM_VERSION``, ``KITTY_WINDOW_ID``,
``TERM=xterm-kitty``), never its drawing ability.

`decide` then picks a mode and says why in one line (`critifusion doctor` prints it):

- auto: kitty graphics where the terminal draws placeholders (kitty 0.28 or newer, Ghostty),
  else Sixel where the device attributes list it, else half-blocks; half-blocks also when the
  terminal did not answer within the timeout (over a slow SSH link, or a terminal that
  ignores the queries).
- a forced protocol (``--images``, ``tui.images``) the probe shows missing is refused with a
  reason (`Decision.refused`); the command line then exits 2 for ``--images`` and falls back to
  half-blocks for ``tui.images`` (see README, "Images in the terminal"). A forced protocol is
  used unverified when the terminal did not answer.

Standard library only, and nothing at import time: `cli`, `doctor` and the app import it.
"""

from __future__ import annotations

import os
import re
import select
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "KITTY_PLACEHOLDERS",
    "MODES",
    "Decision",
    "Probe",
    "decide",
    "parse_replies",
    "probe_terminal",
    "terminal_from_environment",
]

MODES = ("auto", "kitty", "sixel", "halfblock", "none")
MODE_NAMES = {"kitty": "kitty graphics", "sixel": "Sixel", "halfblock": "half-blocks", "none": "no images"}
# The first kitty that draws Unicode-placeholder images (its changelog, 0.28.0).
KITTY_PLACEHOLDERS = (0, 28)
# Terminals known to draw kitty's Unicode placeholders, with the first version that does.
PLACEHOLDER_TERMINALS = {"kitty": KITTY_PLACEHOLDERS, "ghostty": (0,)}
TIMEOUT_S = 1.0

XTVERSION_QUERY = "\x1b[>0q"
KITTY_QUERY = "\x1b_Gi=4243,s=1,v=1,a=q,t=d,f=24;AAAA\x1b\\"
DA1_QUERY = "\x1b[c"
QUERIES = XTVERSION_QUERY + KITTY_QUERY + DA1_QUERY

_DA1 = re.compile(r"\x1b\[\?([\d;]*)c")
_XTVERSION = re.compile(r"\x1bP>\|([^\x1b]*)\x1b\\")
_KITTY = re.compile(r"\x1b_G([^\x1b]*)\x1b\\")


@dataclass(frozen=True)
class Probe:
    """What the terminal said (or the environment, where it did not say its name)."""

    answered: bool = False  # the device attributes came back before the timeout
    sixel: bool = False  # ... and list Sixel (4)
    kitty_graphics: bool = False  # a kitty graphics query was answered OK
    terminal: str = ""  # lower-case name: "kitty", "xterm", "tmux", "wezterm", "" unknown
    version: str = ""  # as given: "0.26.5", "379", "3.3a"
    named_by: str = ""  # "XTVERSION", "TERM_PROGRAM", "KITTY_WINDOW_ID", "TERM"
    error: str = ""  # why there is no answer: "timed out after 1.0 s", "not a terminal", ...

    @property
    def version_tuple(self) -> tuple[int, ...]:
        """(0, 26, 5) of "0.26.5"; () when no version is known."""
        return version_tuple(self.version)

    @property
    def who(self) -> str:
        """ "kitty 0.26.5", "xterm 379", "the terminal"."""
        if not self.terminal:
            return "the terminal"
        return f"{self.terminal} {self.version}".rstrip()


@dataclass(frozen=True)
class Decision:
    mode: str  # kitty | sixel | halfblock | none
    reason: str  # one line: why this mode
    refused: str = ""  # a forced protocol this terminal lacks, said as a sentence; "" if none

    @property
    def label(self) -> str:
        return MODE_NAMES[self.mode]


def version_tuple(text: str) -> tuple[int, ...]:
    match = re.match(r"\d+(?:\.\d+)*", text.strip())
    return tuple(int(part) for part in match.group(0).split(".")) if match else ()


def _name_and_version(text: str) -> tuple[str, str]:
    """XTVERSION's text: "kitty(0.26.5)", "XTerm(379)", "tmux 3.3a", "WezTerm 20240203-…"."""
    text = text.strip()
    match = re.match(r"([^\s(]+)\s*\(([^)]*)\)", text) or re.match(r"(\S+)\s+(\S+)", text)
    if match:
        return match.group(1).lower(), match.group(2)
    return text.lower(), ""


def parse_replies(data: str) -> Probe:
    """The terminal's replies to QUERIES, in any order, with whatever else came in between."""
    da1 = _DA1.search(data)
    terminal = version = named_by = ""
    if xt := _XTVERSION.search(data):
        terminal, version = _name_and_version(xt.group(1))
        named_by = "XTVERSION"
    kitty = any(reply.rsplit(";", 1)[-1] == "OK" for reply in _KITTY.findall(data))
    return Probe(
        answered=da1 is not None,
        sixel=da1 is not None and "4" in da1.group(1).split(";"),
        kitty_graphics=kitty,
        terminal=terminal,
        version=version,
        named_by=named_by,
        error="" if da1 is not None else "no answer to the device-attributes query",
    )


def terminal_from_environment(env: Mapping[str, str]) -> tuple[str, str, str]:
    """(name, version, variable) the environment gives for the terminal; empty when none."""
    program = env.get("TERM_PROGRAM", "").strip()
    if program:
        return program.lower(), env.get("TERM_PROGRAM_VERSION", "").strip(), "TERM_PROGRAM"
    if env.get("KITTY_WINDOW_ID"):
        return "kitty", "", "KITTY_WINDOW_ID"
    if env.get("TERM", "") == "xterm-kitty":
        return "kitty", "", "TERM"
    return "", "", ""


def with_environment(probe: Probe, env: Mapping[str, str]) -> Probe:
    """The probe, its terminal named from the environment where XTVERSION did not name it."""
    if probe.terminal:
        return probe
    name, version, variable = terminal_from_environment(env)
    if not name:
        return probe
    return Probe(probe.answered, probe.sixel, probe.kitty_graphics, name, version, variable, probe.error)


def probe_terminal(fd_in: int | None = None, fd_out: int | None = None, timeout: float = TIMEOUT_S) -> Probe:
    """Ask the terminal on `fd_in`/`fd_out` (standard input and output) and read its replies
    until the device attributes arrive or `timeout` seconds pass. Call it before Textual
    starts; keys typed during the probe (a fraction of a second) are lost."""
    import termios

    fd_in = sys.stdin.fileno() if fd_in is None else fd_in
    fd_out = sys.stdout.fileno() if fd_out is None else fd_out
    if not (os.isatty(fd_in) and os.isatty(fd_out)):
        return Probe(error="not a terminal")
    try:
        saved = termios.tcgetattr(fd_in)
    except termios.error as exc:
        return Probe(error=f"cannot set the terminal's mode ({exc})")
    quiet = list(saved)
    quiet[3] &= ~(termios.ICANON | termios.ECHO)  # lflags: byte by byte, nothing echoed
    quiet[6] = list(saved[6])
    quiet[6][termios.VMIN], quiet[6][termios.VTIME] = 0, 0
    data = b""
    try:
        termios.tcsetattr(fd_in, termios.TCSANOW, quiet)
        os.write(fd_out, QUERIES.encode())
        deadline = time.monotonic() + timeout
        while not _DA1.search(data.decode("utf-8", "replace")):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd_in], [], [], left)[0]:
                break
            chunk = os.read(fd_in, 4096)
            if not chunk:
                break
            data += chunk
    except OSError as exc:
        return Probe(error=f"the terminal query failed ({exc.strerror or exc})")
    finally:
        termios.tcsetattr(fd_in, termios.TCSANOW, saved)
    found = parse_replies(data.decode("utf-8", "replace"))
    if not found.answered:
        return Probe(
            False,
            found.sixel,
            found.kitty_graphics,
            found.terminal,
            found.version,
            found.named_by,
            f"no answer within {timeout:g} s",
        )
    return found


def _draws_placeholders(probe: Probe) -> tuple[bool | None, str]:
    """Whether the terminal draws kitty's Unicode placeholders: True, False, or None (unknown),
    with the reason in words."""
    first = PLACEHOLDER_TERMINALS.get(probe.terminal)
    if first is None:
        if probe.terminal:
            return False, f"{probe.who} does not draw kitty graphics' Unicode placeholders"
        return None, "the terminal did not say which it is (kitty 0.28 or newer and Ghostty draw them)"
    if not probe.version_tuple:
        return None, f"{probe.terminal} did not say its version ({probe.terminal} {_dotted(first)} or newer draws them)"
    if probe.version_tuple < first:
        return False, (
            f"{probe.who} cannot draw kitty graphics' Unicode placeholders "
            f"(they need {probe.terminal} {_dotted(first)} or newer; upgrade it)"
        )
    return True, f"{probe.who} draws kitty graphics"


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(str(part) for part in version)


def _refused(requested: str, why: str) -> Decision:
    return Decision("halfblock", f"{MODE_NAMES[requested]} was asked for, but {why}", refused=why)


def decide(requested: str, probe: Probe, env: Mapping[str, str] | None = None) -> Decision:
    """The mode to use for `requested` (one of MODES) in the terminal `probe` describes."""
    if requested not in MODES:
        raise ValueError(f"unknown image mode {requested!r}; expected one of {MODES}")
    probe = with_environment(probe, os.environ if env is None else env)
    if requested in ("halfblock", "none"):
        return Decision(requested, "as set")
    unverified = f"not verified: {probe.error or 'no answer'}"
    if requested == "kitty":
        if not probe.answered:
            return Decision("kitty", f"as set; {unverified}")
        draws, why = _draws_placeholders(probe)
        if not probe.kitty_graphics:
            return _refused("kitty", f"{probe.who} did not answer the kitty graphics query")
        if draws is False:
            return _refused("kitty", why)
        return Decision("kitty", "as set" + (f"; {why}" if draws is None else ""))
    if requested == "sixel":
        if not probe.answered:
            return Decision("sixel", f"as set; {unverified}")
        if not probe.sixel:
            return _refused("sixel", f"{probe.who} does not list Sixel in its device attributes")
        return Decision("sixel", "as set")
    # auto
    if not probe.answered:
        return Decision("halfblock", f"{probe.who} did not answer the graphics queries ({unverified})")
    if probe.kitty_graphics:
        draws, why = _draws_placeholders(probe)
        if draws:
            return Decision("kitty", why)
        if probe.sixel:
            return Decision("sixel", f"{probe.who} lists Sixel ({why})")
        return Decision("halfblock", f"{why}; --images kitty forces them" if draws is None else why)
    if probe.sixel:
        return Decision("sixel", f"{probe.who} lists Sixel in its device attributes")
    return Decision("halfblock", f"{probe.who} reports neither Sixel nor kitty graphics")

"""Claims: which process is working on which prompt of a batch, kept in the output folder.

A claim is a small JSON file, ``<out>/.claims/<prompt folder>.claim``, created with
``O_CREAT | O_EXCL``: of several processes (on one machine, or on several sharing the folder
over NFS, which creates exclusively on the server) exactly one gets it. It says who holds it
(rank, host, pid and the pid's start time, the launch) and since when. The holder touches
the file every ``heartbeat_s`` seconds from a thread, so its mtime is a heartbeat that keeps
beating while a long diffusion pass holds the event loop's attention. The claim is deleted
when the prompt ends, done or failed.

A claim whose holder is gone may be taken over:

- held on this host: the pid is not alive, or it is now another process (its start time in
  ``/proc`` differs from the one recorded), so a relaunch takes over at once;
- held on another host, where we cannot see the process: its heartbeat is older than
  ``stale_after_s``. "Older" is measured on the file system's clock (the mtime of a file we
  just touched in the same folder), never against our own clock, so clock skew between
  machines does not make a live claim look stale.

Taking over is serialised by a second exclusive file, ``<name>.takeover``: its holder reads
the claim again, and only if it is still stale replaces it, renaming a new claim over the
old one so that the file never disappears. Two processes that both saw a stale claim
therefore cannot both take it, and a plain take cannot slip in between. A takeover file
left by a process that died in that instant is itself stale after ``stale_after_s``.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

CLAIMS_DIR = ".claims"
HEARTBEAT_S = 30.0
# Ten missed heartbeats: long enough for a busy NFS server, short enough that a machine that
# died is taken over within minutes of a relaunch.
STALE_AFTER_S = 300.0


def pid_start(pid: int) -> str | None:
    """When a process started, from /proc (Linux); None where that cannot be read.

    Recorded with the pid so a pid reused by an unrelated process is not mistaken for the
    claim's holder.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def pid_alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, under another user
    if started is not None:
        now = pid_start(pid)
        if now is not None and now != started:
            return False  # the pid was reused
    return True


@dataclass(frozen=True)
class Owner:
    """Who holds a claim, as written in the file."""

    rank: int
    host: str
    pid: int
    launch: str
    since: str
    pid_start: str | None = None

    def describe(self) -> str:
        return f"rank {self.rank} on {self.host} (pid {self.pid}, since {self.since})"


def _unknown_owner(since: str) -> Owner:
    """A holder whose file could not be read (being written, garbage, or just released)."""
    return Owner(rank=-1, host="?", pid=-1, launch="?", since=since)


@dataclass(frozen=True)
class Claim:
    """A claim this process holds."""

    name: str
    path: Path
    owner: Owner
    took_over: Owner | None = None  # the dead holder it replaced, for the log


class ClaimBoard:
    """This process's view of the claims folder: take, release, keep alive, judge others."""

    def __init__(
        self,
        out: Path,
        *,
        rank: int,
        launch: str,
        heartbeat_s: float = HEARTBEAT_S,
        stale_after_s: float = STALE_AFTER_S,
        host: str | None = None,
    ) -> None:
        self.folder = Path(out) / CLAIMS_DIR
        self.folder.mkdir(parents=True, exist_ok=True)
        self.host = host or socket.gethostname()
        self.rank = rank
        self.launch = launch
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self._held: dict[str, Claim] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._clock = self.folder / f".clock-{self.host}-{os.getpid()}"

    # ---------------------------------------------------------------- taking and releasing

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.claim"

    def take(self, name: str) -> Claim | Owner:
        """Claim `name`: the Claim when we got it, else the live Owner that holds it."""
        path = self.path(name)
        if self._create(path):
            return self._hold(name, path)
        holder = self.read(name)
        if holder is not None and not self.is_stale(name, holder):
            return holder
        return self._take_over(name, path)

    def release(self, claim: Claim) -> None:
        """Delete our claim (when it is still ours: a takeover after a long stall is not)."""
        with self._lock:
            self._held.pop(claim.name, None)
        if self.read(claim.name) == claim.owner:
            claim.path.unlink(missing_ok=True)

    def held_by_others(self, names: Iterable[str]) -> dict[str, Owner]:
        """Of `names`, those claimed by a live process other than this one."""
        found = {}
        for name in names:
            if name in self._held:
                continue
            owner = self.read(name)
            if owner is not None and not self.is_stale(name, owner):
                found[name] = owner
        return found

    def read(self, name: str) -> Owner | None:
        try:
            data = json.loads(self.path(name).read_text(encoding="utf-8"))
            return Owner(**data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError):
            # Being written this instant (created, not yet filled), or garbage: a claim file
            # is filled right after its exclusive create, so judge it by its age alone.
            return _unknown_owner("?")

    # ---------------------------------------------------------------- staleness

    def is_stale(self, name: str, owner: Owner) -> bool:
        if owner.host == self.host and owner.pid > 0:
            return not pid_alive(owner.pid, owner.pid_start)
        return self.age(self.path(name)) > self.stale_after_s

    def age(self, path: Path) -> float:
        """Seconds since `path` was last touched, on the file system's clock (0 if gone)."""
        try:
            touched = path.stat().st_mtime
        except FileNotFoundError:
            return 0.0
        return max(0.0, self.fs_now() - touched)

    def fs_now(self) -> float:
        """The file system's "now": the mtime of a file of ours touched this instant."""
        self._clock.touch()
        os.utime(self._clock)  # with no times, NFS sets the server's time
        return self._clock.stat().st_mtime

    # ---------------------------------------------------------------- keeping claims alive

    def start(self) -> ClaimBoard:
        if self._beat is None:
            self._beat = threading.Thread(target=self._heartbeat, name="claim-heartbeat", daemon=True)
            self._beat.start()
        return self

    def close(self) -> None:
        """Stop the heartbeat and release whatever is still held (the prompt's manifest says
        how far it got; a relaunch resumes it)."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        for claim in list(self._held.values()):
            self.release(claim)
        self._clock.unlink(missing_ok=True)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            with self._lock:
                held = list(self._held.values())
            for claim in held:
                try:
                    os.utime(claim.path)
                except OSError:
                    pass  # taken from us (a stall past stale_after_s); release() notices

    # ---------------------------------------------------------------- internals

    def _owner(self) -> Owner:
        pid = os.getpid()
        return Owner(
            rank=self.rank,
            host=self.host,
            pid=pid,
            launch=self.launch,
            since=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            pid_start=pid_start(pid),
        )

    def _create(self, path: Path) -> bool:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        os.close(fd)
        return True

    def _hold(self, name: str, path: Path, took_over: Owner | None = None) -> Claim:
        owner = self._owner()
        # The file exists already (it is the lock); its content says who we are. It is
        # written beside and renamed over the claim, so the claim never disappears and a
        # reader never sees half of it.
        draft = self.folder / f".{name}.{owner.host}.{owner.pid}.draft"
        with open(draft, "w", encoding="utf-8") as handle:
            json.dump(asdict(owner), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(draft, path)
        claim = Claim(name, path, owner, took_over)
        with self._lock:
            self._held[name] = claim
        return claim

    def _holder_of(self, name: str, since: str) -> Owner:
        """Who holds `name` now that someone else got it; unknown when its file is gone again."""
        return self.read(name) or _unknown_owner(since)

    def _take_over(self, name: str, path: Path) -> Claim | Owner:
        lock = path.with_suffix(".takeover")
        if not self._create(lock):
            if self.age(lock) <= self.stale_after_s:
                return self._holder_of(name, "taking over")
            lock.unlink(missing_ok=True)  # its taker died mid-takeover
            if not self._create(lock):
                return self._holder_of(name, "taking over")
        try:
            holder = self.read(name)  # again, now that no one else can replace it
            if holder is None:
                # Released since we looked: a plain take, which another process may win.
                if not self._create(path):
                    return self._holder_of(name, "just now")
                return self._hold(name, path)
            if not self.is_stale(name, holder):
                return holder
            # Replaced in place, never deleted first: a deleted claim would let a plain take
            # slip in and run the prompt without knowing whose work it resumes.
            return self._hold(name, path, took_over=holder)
        finally:
            lock.unlink(missing_ok=True)

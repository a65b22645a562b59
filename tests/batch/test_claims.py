"""Claims in a batch's output folder: exclusive, released, and taken over only from the gone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from critifusion_tui.batch.claims import Claim, ClaimBoard, Owner


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # gone (and reaped): os.kill(pid, 0) says so


def board(tmp_path, rank=0, **kwargs) -> ClaimBoard:
    return ClaimBoard(tmp_path, rank=rank, launch="L", **kwargs)


def write_claim(tmp_path, name, *, host, pid, age_s=0.0):
    path = tmp_path / ".claims" / f"{name}.claim"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rank": 1, "host": host, "pid": pid, "launch": "old", "since": "then"}))
    if age_s:
        then = time.time() - age_s
        os.utime(path, (then, then))
    return path


def test_one_claim_per_prompt_until_released(tmp_path):
    first, second = board(tmp_path, 0), board(tmp_path, 1)
    claim = first.take("001-a-fox")
    assert isinstance(claim, Claim)
    holder = second.take("001-a-fox")
    assert isinstance(holder, Owner) and holder.rank == 0 and holder.pid == os.getpid()
    assert json.loads(claim.path.read_text())["host"] == first.host
    first.release(claim)
    assert not claim.path.exists()
    assert isinstance(second.take("001-a-fox"), Claim)


def test_a_claim_of_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path):
    mine = board(tmp_path)
    pid = dead_pid()
    write_claim(tmp_path, "002-a-whale", host=mine.host, pid=pid)
    claim = mine.take("002-a-whale")
    assert isinstance(claim, Claim) and claim.took_over.pid == pid
    assert json.loads(claim.path.read_text())["pid"] == os.getpid()
    assert not (tmp_path / ".claims" / "002-a-whale.takeover").exists()


def test_another_hosts_claim_is_kept_while_its_heartbeat_is_fresh(tmp_path):
    mine = board(tmp_path, stale_after_s=60)
    write_claim(tmp_path, "003-fresh", host="elsewhere", pid=4242)
    write_claim(tmp_path, "004-stale", host="elsewhere", pid=4242, age_s=120)
    assert isinstance(mine.take("003-fresh"), Owner)
    assert mine.held_by_others(["003-fresh", "004-stale"]).keys() == {"003-fresh"}
    taken = mine.take("004-stale")
    assert isinstance(taken, Claim) and taken.took_over.host == "elsewhere"


def test_the_heartbeat_keeps_a_claim_fresh(tmp_path):
    mine = board(tmp_path, heartbeat_s=0.05).start()
    try:
        claim = mine.take("005-a-frog")
        then = time.time() - 3600
        os.utime(claim.path, (then, then))
        time.sleep(0.3)
        assert mine.age(claim.path) < 60
    finally:
        mine.close()
    assert not claim.path.exists()  # closing releases what is still held


def test_a_takeover_in_progress_elsewhere_is_respected(tmp_path):
    mine = board(tmp_path, stale_after_s=60)
    write_claim(tmp_path, "006-a-cat", host="elsewhere", pid=1, age_s=120)
    (tmp_path / ".claims" / "006-a-cat.takeover").touch()  # another process is taking it over
    assert isinstance(mine.take("006-a-cat"), Owner)
    old = time.time() - 120
    os.utime(tmp_path / ".claims" / "006-a-cat.takeover", (old, old))  # ...and died doing so
    assert isinstance(mine.take("006-a-cat"), Claim)


@pytest.mark.parametrize("at_create", [1, 2, 3])
def test_a_takeover_raced_by_a_plain_take_is_won_once_and_names_the_dead_holder(tmp_path, monkeypatch, at_create):
    # Two relaunched processes reach a dead process's claim together. Whichever wins must
    # know whose work it resumes: the other one's take runs just before the first one's
    # `at_create`-th exclusive create, the instants where a claim could have gone missing.
    first, second = board(tmp_path, 0), board(tmp_path, 1)
    pid = dead_pid()
    write_claim(tmp_path, "007-a-dog", host=first.host, pid=pid)
    creates, raced = 0, []
    real_create = first._create

    def create(path):
        nonlocal creates
        creates += 1
        if creates == at_create:
            raced.append(second.take("007-a-dog"))
        return real_create(path)

    monkeypatch.setattr(first, "_create", create)
    taken = [first.take("007-a-dog"), *raced]
    if not raced:
        taken.append(second.take("007-a-dog"))
    claims = [t for t in taken if isinstance(t, Claim)]
    assert len(claims) == 1
    assert claims[0].took_over is not None and claims[0].took_over.pid == pid
    assert first.read("007-a-dog") == claims[0].owner
    assert not list((tmp_path / ".claims").glob(".*.draft"))

"""Library output during a model load is caught at the file-descriptor level, not shown."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

from critifusion_tui.engine.load_output import capture_output


def test_writes_to_the_file_descriptors_are_caught_and_cleaned():
    # A child process writes straight to fd 1 and 2, as the tokenizers library (Rust) does.
    code = (
        "import os, sys\n"
        "from critifusion_tui.engine.load_output import capture_output\n"
        "with capture_output((1, 2)) as caught:\n"
        "    os.write(1, b'Ignored unknown kwarg option __type\\n' * 3)\n"
        "    os.write(2, b'\\x1b]0;title\\x07hub warning\\n')\n"
        "print(caught.messages())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # nothing reached the real stderr, escape sequence included
    assert proc.stdout.strip() == str([("info", "Ignored unknown kwarg option __type (x3)"), ("info", "hub warning")])


def test_python_warnings_become_warnings_and_the_descriptors_come_back(capfd):
    with capture_output((1,)) as caught:
        warnings.warn("local_dir_use_symlinks is deprecated", UserWarning)
        os.write(1, b"stray\n")
    os.write(1, b"after\n")
    assert ("warning", "UserWarning: local_dir_use_symlinks is deprecated") in caught.messages()
    assert ("info", "stray") in caught.messages()
    assert capfd.readouterr().out == "after\n"


def test_what_was_caught_is_kept_when_the_block_fails():
    try:
        with capture_output((1,)) as caught:
            os.write(1, b"why it failed\n")
            raise RuntimeError("load failed")
    except RuntimeError:
        pass
    assert caught.printed == ["why it failed"]


def test_a_stream_on_its_own_descriptor_still_reaches_its_target_during_a_capture():
    # A model loads in the background (fds 1 and 2 captured) while headless prints its lines.
    code = (
        "import sys, threading\n"
        "from critifusion_tui.engine.load_output import capture_output, own_descriptor\n"
        "lines = own_descriptor(sys.stdout)\n"
        "inside, leave = threading.Event(), threading.Event()\n"
        "def load():\n"
        "    with capture_output((1, 2)) as caught:\n"
        "        inside.set(); leave.wait(10)\n"
        "    lines.write(f'caught {caught.messages()}\\n')\n"
        "thread = threading.Thread(target=load); thread.start(); inside.wait(10)\n"
        "print('[tags] done', file=lines, flush=True)\n"
        "print('swallowed', flush=True)\n"
        "leave.set(); thread.join()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["[tags] done", "caught [('info', 'swallowed')]"]

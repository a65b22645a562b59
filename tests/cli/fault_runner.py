"""Run `critifusion` with a file-system fault injected: ``fault_runner.py CODE N ARGS...``.

Every ``os.fsync`` after the first N fails with ``OSError(CODE)`` (ENOSPC: the disk is
full; EROFS: the file system turned read-only), which is where a real full disk shows
itself for the store's atomic writes. The rest is the real command.
"""

from __future__ import annotations

import errno
import os
import sys


def main() -> int:
    code, allowed, *argv = sys.argv[1:]
    number = getattr(errno, code)
    real_fsync = os.fsync
    calls = 0

    def failing_fsync(fd: int) -> None:
        nonlocal calls
        calls += 1
        if calls > int(allowed):
            raise OSError(number, os.strerror(number))
        real_fsync(fd)

    os.fsync = failing_fsync
    from critifusion_tui.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())

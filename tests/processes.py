"""Helper processes of the desktop tests: a private Xvfb, and ending a process within a deadline."""

from __future__ import annotations

import os
import select
import subprocess
import time
from pathlib import Path
from typing import Any

from .bus import require


def start_xvfb(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A private Xvfb (it picks a free display number itself: ``-displayfd``); its process and ``DISPLAY``."""
    read_end, write_end = os.pipe()
    log_path = directory / "xvfb.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [require("Xvfb"), "-displayfd", str(write_end), "-nolisten", "tcp", "-screen", "0", "640x480x24"],
        pass_fds=(write_end,),
        stdout=log,
        stderr=log,
    )
    os.close(write_end)
    try:
        number = b""
        deadline = time.monotonic() + 15
        while not number.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or process.poll() is not None:
                raise AssertionError(f"Xvfb did not start: {log_path.read_text()}")
            if select.select([read_end], [], [], remaining)[0]:
                chunk = os.read(read_end, 64)
                if not chunk:
                    raise AssertionError(f"Xvfb exited: {log_path.read_text()}")
                number += chunk
    except BaseException:
        end_process(process)
        raise
    finally:
        os.close(read_end)
        log.close()
    return process, f":{number.decode().strip()}"


def end_process(process: subprocess.Popen[Any], grace_s: float = 5) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``; returns once it is gone."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

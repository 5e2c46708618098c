"""Test helper: run a `workbench` command and kill it with SIGKILL once it has done some work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable


def sigkill_when(args: list[str], ready: Callable[[], bool], *, timeout: float, what: str) -> None:
    """Start ``python -m workbench.cli ARGS``, wait until ``ready()`` (polled every 50 ms, at most
    ``timeout`` seconds), check that the command is still running, and SIGKILL it."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if ready():
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the {what} finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()

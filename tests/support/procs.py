"""The one bounded poll and the one stop-by-PID of the tests, benchmarks and demo."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable

POLL_INTERVAL = 0.05


def wait_until(check: Callable[[], bool], seconds: float, what: str,
               interval: float = POLL_INTERVAL) -> None:
    """Poll ``check()`` until it holds; after ``seconds``, raise naming ``what``.

    ``check`` may raise to stop the wait early (a process that died before it was ready).
    """
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {seconds:g} s")
        time.sleep(interval)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def stop_pid(pid: int, grace: float = 15.0) -> None:
    """SIGTERM exactly this PID, wait for it to go, SIGKILL it after ``grace`` seconds.

    For a daemon we did not start as a child (it forked); a child is stopped with
    :func:`stop_process`, which also reaps it.
    """
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        wait_until(lambda: _gone(pid), grace, f"pid {pid} exiting on SIGTERM")
    except TimeoutError:
        os.kill(pid, signal.SIGKILL)


def stop_process(proc: subprocess.Popen[bytes] | subprocess.Popen[str],
                 grace: float = 10.0) -> None:
    """SIGTERM a child we started, by its PID; SIGKILL after ``grace`` seconds; reap it."""
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace)

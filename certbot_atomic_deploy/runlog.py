"""What the last runs did, kept where a run that cannot read its config still finds it.

Imports no certbot and no cryptography. ``STATE_DIR/runs.json`` (0600, in the
state directory beside the config, which is known before the config is read)
holds the metrics file the last readable config named, how many runs in a row
have failed, and when the last one ended. It serves two things:

- **the metrics file tells the truth** when a run stops before it can render
  any target (a config typo, an unreadable ``state.json``, the lock): the file
  the last good run wrote keeps its target samples, and its
  ``last_run_timestamp_seconds`` and ``last_run_success`` are rewritten, so an
  alert on staleness or failure fires (the README gives the rule);
- **a failing root run backs off**: ``deploy --spool`` is started by a path
  unit whenever the spool is not empty; a spool run that fails before it takes
  the markers (a config it cannot read, the lock) or leaves something it cannot
  take would otherwise be started again at once, several times a second,
  forever. The next spool run first waits ``min(5 s x 2^(n-1), 300 s)`` from
  the end of the last one, ``n`` such runs in a row. A spool run that took
  everything clears the count (a target that failed is pending in the state and
  retried; the empty spool starts nothing). Other runs never wait and leave the
  count alone.

Nothing here ever fails a run: a state directory that is missing or cannot be
written simply keeps no record (the run's own error says what is wrong).
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from typing import NamedTuple

from certbot_atomic_deploy.state import StateDir
from daemon_keys.atomicfile import write_file_atomic
from daemon_keys.errors import KeysError
from daemon_keys.fs import read_regular

RUNS_FILE = "runs.json"
RUNS_FILE_MODE = 0o600
BACKOFF_FIRST = 5.0
BACKOFF_MAX = 300.0
MAX_RUNS_BYTES = 1 << 16
MAX_METRICS_BYTES = 1 << 26
LAST_RUN_METRICS = ("last_run_timestamp_seconds", "last_run_success")


class Runs(NamedTuple):
    metrics_file: str | None = None
    failures: int = 0  # runs in a row that failed
    ended_at: float = 0.0  # Unix time


def backoff_seconds(runs: Runs, now: float) -> float:
    """How long a spool run should still wait after ``runs.failures`` failures."""
    if runs.failures <= 0:
        return 0.0
    delay = min(BACKOFF_FIRST * 2.0 ** min(runs.failures - 1, 16), BACKOFF_MAX)
    return max(0.0, min(delay, runs.ended_at + delay - now))


def read(state: StateDir) -> Runs:
    """The record, or an empty one when there is none (or it is not ours to trust)."""
    try:
        fd = state.open_existing()
    except KeysError:
        return Runs()
    if fd is None:
        return Runs()
    try:
        _, data = read_regular(RUNS_FILE, dir_fd=fd, limit=MAX_RUNS_BYTES, where=RUNS_FILE)
        raw = json.loads(data)
        metrics = raw.get("metrics_file")
        return Runs(metrics_file=metrics if isinstance(metrics, str) else None,
                    failures=max(0, int(raw.get("failures", 0))),
                    ended_at=float(raw.get("ended_at", 0.0)))
    except (KeysError, ValueError, TypeError, AttributeError, RecursionError):
        return Runs()
    finally:
        os.close(fd)


def write(state: StateDir, runs: Runs) -> None:
    """Keep the record; silently not when the state directory is missing or unsafe."""
    try:
        fd = state.open_existing()
    except KeysError:
        return
    if fd is None:
        return
    try:
        write_file_atomic(fd, RUNS_FILE, json.dumps(runs._asdict()).encode(),
                          uid=os.geteuid(), gid=os.getegid(), mode=RUNS_FILE_MODE,
                          where=os.path.join(state.path, RUNS_FILE))
    except KeysError:
        pass
    finally:
        os.close(fd)


def ended(state: StateDir, *, settled: bool | None, metrics_file: str | None = None,
          known: bool = True) -> Runs:
    """Record a run's end. ``settled``: a spool run took everything (True) or did not
    (False: the count grows); None for any other run (the count stays). ``known``: the
    run read its config, so ``metrics_file`` (None: it names none) replaces the
    remembered one."""
    before = read(state)
    failures = (before.failures if settled is None else
                0 if settled else before.failures + 1)
    runs = Runs(metrics_file=metrics_file if known else before.metrics_file,
                failures=failures, ended_at=time.time())
    if runs._replace(ended_at=0.0) != before._replace(ended_at=0.0):
        write(state, runs)  # a run like the last one writes nothing: the hook's cost
    return runs


def last_run_lines(at: float, ok: bool) -> list[str]:
    from certbot_atomic_deploy.metrics import PREFIX

    return [f"# HELP {PREFIX}_last_run_timestamp_seconds When the last run that writes "
            "state ended (Unix time), whether or not it could read its config.",
            f"# TYPE {PREFIX}_last_run_timestamp_seconds gauge",
            f"{PREFIX}_last_run_timestamp_seconds {at:.0f}",
            f"# HELP {PREFIX}_last_run_success 1 when that run succeeded, 0 when it failed "
            "(a config or state it could not read, the lock, a target).",
            f"# TYPE {PREFIX}_last_run_success gauge",
            f"{PREFIX}_last_run_success {1 if ok else 0}"]


def mark_failed_metrics(path: str, at: float) -> None:
    """Rewrite the last good run's metrics file with ``last_run_success 0``: its target
    samples stay (they are what the daemons hold), the run's own samples are new."""
    from certbot_atomic_deploy import metrics

    directory, name = os.path.split(path)
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        _, data = read_regular(name, dir_fd=fd, limit=MAX_METRICS_BYTES, where=path)
        old = data.decode("utf-8", "replace").splitlines()
    except KeysError:
        old = []
    finally:
        os.close(fd)
    names = {f"{metrics.PREFIX}_{m}" for m in LAST_RUN_METRICS}

    def metric_of(line: str) -> str:  # '# HELP NAME ...', '# TYPE NAME ...', 'NAME VALUE'
        words = line.split()
        return (words[2] if len(words) > 2 else "") if line.startswith("#") else (
            words[0].split("{")[0] if words else "")

    kept = [line for line in old if metric_of(line) not in names]
    with contextlib.suppress(KeysError, OSError):  # the run's own error says why
        metrics.write(path, "\n".join([*kept, *last_run_lines(at, False)]) + "\n")

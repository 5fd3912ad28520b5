"""What each target holds, for ``status`` and ``rollback``, and the run lock.

Imports no certbot and no cryptography. Lives in the state directory beside
the config (``atomic-deploy.state/`` for ``atomic-deploy.conf``), mode 0700:

- ``<target>.json``: the current publish (lineage, archive version, serial,
  expiry, names) and the kept older ones;
- ``<target>.<N>.pem``: for file targets, the bytes of publish N (a versioned
  directory keeps its own ``vN/``), mode 0600, so ``rollback`` can restore it;
- ``lock``: ``flock``-ed by every run that writes, so runs never interleave.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from typing import NamedTuple

from certbot_atomic_deploy.atomicfile import open_directory, write_file_atomic
from certbot_atomic_deploy.errors import DeployError, LockError

STATE_DIR_MODE = 0o700
STATE_FILE_MODE = 0o600
LOCK_POLL = 0.1


class Record(NamedTuple):
    seq: int
    lineage: str
    version: int
    serial: str
    not_after: str
    names: list[str]
    published_at: str


class TargetState:
    def __init__(self, current: Record | None = None,
                 history: list[Record] | None = None) -> None:
        self.current = current
        self.history = history or []  # older publishes, oldest first


class StateDir:
    def __init__(self, path: str) -> None:
        self.path = path

    def _open(self) -> int:
        return open_directory(self.path, create_mode=STATE_DIR_MODE)

    def load(self, target: str) -> TargetState:
        try:
            with open(os.path.join(self.path, f"{target}.json"), encoding="utf-8") as f:
                raw = json.load(f)
        except FileNotFoundError:
            return TargetState()
        except (OSError, ValueError) as exc:
            raise DeployError(f"{self.path}/{target}.json: unreadable state ({exc}); "
                              "remove it and deploy again") from None
        current = Record(**raw["current"]) if raw.get("current") else None
        return TargetState(current=current, history=[Record(**r) for r in raw.get("history", [])])

    def save(self, target: str, state: TargetState, file_bytes: bytes | None = None,
             keep: int = 2) -> None:
        """Record ``state``; for a file target also keep ``file_bytes`` as its version."""
        state.history = state.history[-keep:] if keep else []
        body = json.dumps({"current": state.current._asdict() if state.current else None,
                           "history": [r._asdict() for r in state.history]},
                          indent=2).encode()
        fd = self._open()
        try:
            if file_bytes is not None and state.current is not None:
                write_file_atomic(fd, f"{target}.{state.current.seq}.pem", file_bytes, uid=0,
                                  gid=0, mode=STATE_FILE_MODE,
                                  where=f"{self.path}/{target}.{state.current.seq}.pem")
            write_file_atomic(fd, f"{target}.json", body, uid=os.geteuid(), gid=os.getegid(),
                              mode=STATE_FILE_MODE, where=f"{self.path}/{target}.json")
            kept = {r.seq for r in state.history} | (
                {state.current.seq} if state.current else set())
            prefix = f"{target}."
            for entry in os.listdir(fd):
                middle = entry[len(prefix):-4] if entry.startswith(prefix) and entry.endswith(
                    ".pem") else ""
                if middle.isdigit() and int(middle) not in kept:
                    os.unlink(entry, dir_fd=fd)
        finally:
            os.close(fd)

    def file_version(self, target: str, seq: int) -> bytes:
        path = os.path.join(self.path, f"{target}.{seq}.pem")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise DeployError(f"{path}: the kept version is gone ({os.strerror(exc.errno or 0)})"
                              "; cannot roll back to it") from None
        with os.fdopen(fd, "rb") as f:
            return f.read()

    @contextlib.contextmanager
    def lock(self, timeout: float) -> Iterator[None]:
        """Hold the run lock; wait at most ``timeout`` seconds for another run to finish."""
        fd = self._open()
        try:
            lock_fd = os.open("lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                              STATE_FILE_MODE, dir_fd=fd)
        finally:
            os.close(fd)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LockError(
                            f"{self.path}/lock: another certbot-atomic-deploy run has held "
                            f"it for over {timeout:g} s; gave up (see 'fuser -v "
                            f"{self.path}/lock', or raise --lock-timeout)") from None
                    time.sleep(LOCK_POLL)
            yield
        finally:
            os.close(lock_fd)  # closing releases the flock

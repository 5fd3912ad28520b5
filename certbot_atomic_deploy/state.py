"""What each target holds, for ``status`` and ``rollback``, and the run lock.

Imports no certbot and no cryptography. Lives in the state directory beside
the config (``atomic-deploy.state/`` for ``atomic-deploy.conf``), mode 0700:

- ``state.json`` (0600): per target, the current publish (lineage, archive
  version, serial, expiry, names), the kept older ones, and for file targets
  their bytes, so ``rollback`` can restore them (a versioned directory keeps
  its own ``vN/``);
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

from daemon_keys.atomicfile import open_for_writing, write_file_atomic
from daemon_keys.errors import KeysError, LockError
from daemon_keys.fs import Leftovers

STATE_DIR_MODE = 0o700
STATE_FILE_MODE = 0o600
STATE_FILE = "state.json"
LOCK_POLL = 0.1


_BINARY = "base64:"


def _as_text(data: bytes) -> str:
    if data.startswith(b"-----BEGIN "):
        return data.decode("ascii")
    import base64
    return _BINARY + base64.b64encode(data).decode("ascii")


class Record(NamedTuple):
    seq: int
    lineage: str
    version: int
    serial: str
    not_after: str
    names: list[str]
    published_at: str
    # pkcs12 targets, whose bytes are not reproducible: the fingerprint of what went
    # in (see pkcs12.fingerprint) and the sha256 of the bytes written.
    source: str | None = None
    digest: str | None = None


class TargetState:
    def __init__(self, current: Record | None = None, history: list[Record] | None = None,
                 files: dict[int, str] | None = None) -> None:
        self.current = current
        self.history = history or []  # older publishes, oldest first
        # file targets: seq -> the published bytes (PEM text, or "base64:..." if binary)
        self.files = files or {}


class StateDir:
    """The state directory; every target's record lives in one ``state.json``.

    One file, so a run writes its records with one atomic replace (one fsync of
    the file, one rename, one fsync of the directory), whatever the number of
    targets. Loaded once per run, written by :meth:`flush`.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._targets: dict[str, TargetState] | None = None
        self._dirty = False

    @property
    def file(self) -> str:
        return os.path.join(self.path, STATE_FILE)

    def _open(self) -> int:
        return open_for_writing(self.path, create_mode=STATE_DIR_MODE)

    def _all(self) -> dict[str, TargetState]:
        if self._targets is None:
            try:
                with open(self.file, encoding="utf-8") as f:
                    raw = json.load(f)
                self._targets = {
                    name: TargetState(
                        current=Record(**t["current"]) if t.get("current") else None,
                        history=[Record(**r) for r in t.get("history", [])],
                        files={int(k): v for k, v in t.get("files", {}).items()})
                    for name, t in raw.get("targets", {}).items()}
            except FileNotFoundError:
                self._targets = {}
            except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
                raise KeysError(f"{self.file}: unreadable state ({exc}); move it away and "
                                "deploy again (status and rollback start afresh)") from None
        return self._targets

    def load(self, target: str) -> TargetState:
        return self._all().get(target) or TargetState()

    def save(self, target: str, state: TargetState, file_bytes: bytes | None = None,
             keep: int = 2) -> None:
        """Record ``state`` (in memory until :meth:`flush`); keep ``file_bytes`` for rollback."""
        state.history = state.history[-keep:] if keep else []
        if file_bytes is not None and state.current is not None:
            state.files[state.current.seq] = _as_text(file_bytes)
        kept = {r.seq for r in state.history} | ({state.current.seq} if state.current else set())
        state.files = {seq: text for seq, text in state.files.items() if seq in kept}
        self._all()[target] = state
        self._dirty = True

    def flush(self) -> None:
        """Write every record with one atomic replace, if anything changed."""
        if not self._dirty:
            return
        body = json.dumps({"targets": {
            name: {"current": t.current._asdict() if t.current else None,
                   "history": [r._asdict() for r in t.history],
                   "files": {str(k): v for k, v in t.files.items()}}
            for name, t in sorted(self._all().items())}}, indent=1).encode()
        fd = self._open()
        try:
            Leftovers().remove(fd, STATE_FILE)
            write_file_atomic(fd, STATE_FILE, body, uid=os.geteuid(), gid=os.getegid(),
                              mode=STATE_FILE_MODE, where=self.file)
        finally:
            os.close(fd)
        self._dirty = False

    def file_version(self, target: str, seq: int) -> bytes:
        text = self.load(target).files.get(seq)
        if text is None:
            raise KeysError(f"{self.file}: publish {seq} of [{target}] is no longer kept; "
                            "cannot roll back to it")
        if text.startswith(_BINARY):
            import base64
            return base64.b64decode(text[len(_BINARY):])
        return text.encode("ascii")

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

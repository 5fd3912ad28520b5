"""What each target holds, for ``status`` and ``rollback``, and the run lock.

Imports no certbot and no cryptography. Lives in the state directory beside
the config (``atomic-deploy.state/`` for ``atomic-deploy.conf``), mode 0700:

- ``state.json`` (0600): per target, the current publish (lineage, archive
  version, serial, expiry, names) and the kept older ones: records only, a
  few hundred bytes a target;
- ``kept/<target>.<seq>`` (0600): the bytes of a file target's publish, kept so
  ``rollback`` can restore them (a versioned directory keeps its own ``vN/``).
  Each is written once, when its target is published, and removed when its
  record is no longer kept; a run that publishes one target of 10,000 writes
  one of them, not 10,000;
- ``lock``: ``flock``-ed by every run that writes, so runs never interleave.

:meth:`StateDir.flush` writes in an order that a crash at any point leaves
consistent: the new kept copies (each fsync'd, then the directory), then
``state.json`` by atomic replace, then the removal of copies no record names.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from typing import NamedTuple

from daemon_keys.atomicfile import open_for_writing, write_file_atomic, write_new_file
from daemon_keys.errors import KeysError, LockError, UnsafePathError, write_failed
from daemon_keys.fs import READ_DIR, Leftovers, exists_at, open_dir, read_regular
from daemon_keys.trust import file_check

STATE_DIR_MODE = 0o700
STATE_FILE_MODE = 0o600
STATE_FILE = "state.json"
KEPT_DIR = "kept"
MAX_KEPT_BYTES = 1 << 22
MAX_STATE_BYTES = 1 << 28  # records only: a few hundred bytes a target
LOCK_POLL = 0.1
_KEPT_NAME = re.compile(r"^(.+)\.([0-9]+)\Z")


class Record(NamedTuple):
    seq: int
    lineage: str
    version: int
    serial: str
    not_after: str
    names: list[str]
    published_at: str
    # pkcs12 targets, whose bytes are not reproducible: the fingerprint of what went
    # in (see pem.keystore_fingerprint) and the sha256 of the bytes written.
    source: str | None = None
    digest: str | None = None


# What a published target still needs, kept until it has run (a later run retries it).
PENDING_CHECK = "check"  # published, its check not passed yet (a failure rolls it back)
PENDING_RELOAD = "reload"  # published and checked, its reload not run yet
PENDING_PUSH = "push"  # a host target: the lineage's version not committed there yet
PENDING = (PENDING_CHECK, PENDING_RELOAD, PENDING_PUSH)


class LastRun(NamedTuple):
    """The last run's outcome for a target: published, unchanged, failed, rolled-back."""

    result: str
    at: str  # ISO 8601, UTC


class ProbeRun(NamedTuple):
    """The last probe of a target (``probe =``): did its daemon serve what was published."""

    ok: bool
    detail: str
    at: str  # ISO 8601, UTC


class DaneState(NamedTuple):
    """A ``tlsa =`` target's switch the DANE gate holds, and the records a rollover
    over RFC 2136 added (and will retire). Times ISO 8601, UTC."""

    held: int | None = None  # the lineage version whose switch is held, or None
    since: str | None = None  # held since
    detail: str = ""  # why (one line)
    publish: tuple[str, ...] = ()  # zone-file lines that would let it switch
    switch_after: str | None = None  # RFC 2136: the records added; every cache has them then
    retire: tuple[str, ...] = ()  # "NAME U S M HEX": vouch for the old material only, to remove
    retire_after: str | None = None  # once no cache can still send a sender to the old key
    retire_for: int | None = None  # the seq of the record switched away from

    @property
    def empty(self) -> bool:
        return self.held is None and not self.retire


class TargetState:
    def __init__(self, current: Record | None = None,
                 history: list[Record] | None = None, pending: str | None = None,
                 pending_since: str | None = None, last: LastRun | None = None,
                 probe: ProbeRun | None = None, dane: DaneState | None = None) -> None:
        self.current = current
        self.history = history or []  # older publishes, oldest first
        self.pending = pending  # one of PENDING, or None
        self.pending_since = pending_since  # when it became pending (ISO 8601, UTC)
        self.last = last  # what the last run that took this target did with it
        self.probe = probe  # the last probe of what it holds
        self.dane = dane  # a switch the DANE gate holds, and records to retire

    def copy(self) -> TargetState:
        return TargetState(self.current, list(self.history), self.pending, self.pending_since,
                           self.last, self.probe, self.dane)

    def set_pending(self, what: str | None, now: str) -> None:
        if what is None:
            self.pending = self.pending_since = None
        else:
            if self.pending is None:
                self.pending_since = now
            self.pending = what

    def seqs(self) -> set[int]:
        return {r.seq for r in self.history} | ({self.current.seq} if self.current else set())


class StateDir:
    """The state directory: every target's record in one ``state.json``, loaded once per
    run and written by :meth:`flush` with one atomic replace; kept bytes beside it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._targets: dict[str, TargetState] | None = None
        self._dirty = False
        self._new_copies: dict[tuple[str, int], bytes] = {}  # written by flush
        self._fd: int | None = None  # the directory, walked and checked once per run

    @property
    def file(self) -> str:
        return os.path.join(self.path, STATE_FILE)

    def _open(self) -> int:
        """A descriptor of the directory (created if missing), the caller's to close. The
        path is walked and checked once (:func:`open_for_writing`); later calls dup it."""
        if self._fd is None:
            self._fd = open_for_writing(self.path, create_mode=STATE_DIR_MODE)
        return os.dup(self._fd)

    def open_existing(self) -> int | None:
        """Like :meth:`_open`, but None when the directory does not exist (nothing is
        created: ``status`` and a run that cannot read its config make nothing)."""
        if self._fd is None:
            try:
                self._fd = open_dir(self.path, writer_uid=os.geteuid())
            except UnsafePathError:
                if not os.path.lexists(self.path):
                    return None
                raise
        return os.dup(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()

    def create(self) -> None:
        """Make the directory if it is missing (``units``: a hardened service may
        write in it, but not create it)."""
        os.close(self._open())

    def _all(self) -> dict[str, TargetState]:
        """Every target's state, read once. An unreadable file raises, now and on every
        later call: a run never writes over a state it could not read."""
        if self._targets is None:
            try:
                data = self._read()
                self._targets = {} if data is None else self._parse(json.loads(data))
            except (ValueError, TypeError, KeyError, RecursionError) as exc:
                why = "nested too deeply" if isinstance(exc, RecursionError) else exc
                raise KeysError(f"{self.file}: unreadable state ({why}); move it away and "
                                "deploy again (status and rollback start afresh; pending "
                                "reloads are lost: run them by hand)") from None
        return self._targets

    def _read(self) -> bytes | None:
        """``state.json`` through the checked directory, never following a link; None
        when there is no state yet."""
        fd = self.open_existing()
        if fd is None:
            return None
        try:
            if not exists_at(fd, STATE_FILE):
                return None
            return read_regular(STATE_FILE, dir_fd=fd, limit=MAX_STATE_BYTES, where=self.file,
                                error=KeysError,
                                check=file_check(self.file, KeysError,
                                                 stakes="it decides what is rolled back"))[1]
        finally:
            os.close(fd)

    def _parse(self, raw: object) -> dict[str, TargetState]:
        targets = {}
        copies = {}
        top = _mapping(raw, "the file")
        if "targets" not in top:  # not ours, or cut short: never written over as empty
            raise ValueError("no 'targets' in it")
        for name, t in _mapping(top["targets"], "targets").items():
            t = _mapping(t, f"target {name}")
            pending = _mapping(t.get("pending") or {}, f"{name} pending")
            what = pending.get("what")
            if what is not None and what not in PENDING:
                raise ValueError(f"{name}: pending '{what}' is not one of "
                                 f"{', '.join(PENDING)}")
            last = _mapping(t.get("last") or {}, f"{name} last")
            probe = _mapping(t.get("probe") or {}, f"{name} probe")
            dane = _mapping(t.get("dane") or {}, f"{name} dane")
            targets[name] = TargetState(
                current=_record(t["current"]) if t.get("current") else None,
                history=[_record(r) for r in _list(t.get("history", []))],
                pending=what,
                pending_since=_text_or_none(pending.get("since")),
                last=LastRun(str(last["result"]), str(last["at"])) if last else None,
                probe=ProbeRun(probe["ok"] is True, str(probe["detail"]), str(probe["at"]))
                if probe else None,
                dane=_dane(dane) if dane else None)
            for seq, text in _mapping(t.get("files", {}), "files").items():
                copies[(name, int(seq))] = _legacy_bytes(str(text))  # 0.1.0 kept them inline
        if copies:
            self._new_copies.update(copies)
            self._dirty = True
        return targets

    def load(self, target: str) -> TargetState:
        return self._all().get(target) or TargetState()

    def save(self, target: str, state: TargetState, file_bytes: bytes | None = None,
             keep: int = 2) -> None:
        """Record ``state`` (in memory until :meth:`flush`); keep ``file_bytes`` for rollback."""
        state.history = state.history[-keep:] if keep else []
        if file_bytes is not None and state.current is not None:
            self._new_copies[(target, state.current.seq)] = file_bytes
        self._all()[target] = state
        self._dirty = True

    def put(self, target: str, state: TargetState) -> None:
        """Record ``state`` as it is (in memory until :meth:`flush`)."""
        self._all()[target] = state
        self._dirty = True

    def flush(self) -> None:
        """Write what changed: new kept copies, then ``state.json``, then drop old copies."""
        if not self._dirty:
            return
        targets = self._all()
        wanted = {(name, seq) for name, t in targets.items() for seq in t.seqs()}
        body = json.dumps({"targets": {
            name: {"current": t.current._asdict() if t.current else None,
                   "history": [r._asdict() for r in t.history],
                   **({"pending": {"what": t.pending, "since": t.pending_since}}
                      if t.pending else {}),
                   **({"last": t.last._asdict()} if t.last else {}),
                   **({"probe": t.probe._asdict()} if t.probe else {}),
                   **({"dane": t.dane._asdict()} if t.dane and not t.dane.empty else {})}
            for name, t in sorted(targets.items())}},
            separators=(",", ":")).encode()  # compact: the C encoder (indent is Python's)
        fd = self._open()
        try:
            kept_fd = self._kept_dir(fd)
            try:
                self._write_copies(kept_fd, wanted)
                Leftovers().remove(fd, STATE_FILE)
                write_file_atomic(fd, STATE_FILE, body, uid=os.geteuid(), gid=os.getegid(),
                                  mode=STATE_FILE_MODE, where=self.file)
                self._drop_copies(kept_fd, wanted)
            finally:
                os.close(kept_fd)
        finally:
            os.close(fd)
        self._new_copies.clear()
        self._dirty = False

    def _kept_dir(self, fd: int) -> int:
        try:
            os.mkdir(KEPT_DIR, STATE_DIR_MODE, dir_fd=fd)
        except FileExistsError:
            pass
        except OSError as exc:
            raise write_failed(os.path.join(self.path, KEPT_DIR), "creating the directory",
                               exc) from None
        return os.open(KEPT_DIR, READ_DIR, dir_fd=fd)

    def _write_copies(self, kept_fd: int, wanted: set[tuple[str, int]]) -> None:
        written = False
        for (name, seq), data in sorted(self._new_copies.items()):
            if (name, seq) not in wanted:
                continue  # published and dropped in one run (keep = 0)
            copy = f"{name}.{seq}"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(copy, dir_fd=kept_fd)  # a crashed run's copy of the same seq
            write_new_file(kept_fd, copy, data, uid=os.geteuid(), gid=os.getegid(),
                           mode=STATE_FILE_MODE, where=os.path.join(self.path, KEPT_DIR, copy))
            written = True
        if written:
            os.fsync(kept_fd)

    def _drop_copies(self, kept_fd: int, wanted: set[tuple[str, int]]) -> None:
        """Remove every copy no record names (listing ``kept/`` once)."""
        dropped = False
        for entry in os.listdir(kept_fd):
            match = _KEPT_NAME.match(entry)
            if match and (match.group(1), int(match.group(2))) not in wanted:
                os.unlink(entry, dir_fd=kept_fd)
                dropped = True
        if dropped:
            os.fsync(kept_fd)

    def file_version(self, target: str, seq: int) -> bytes:
        """The bytes a file target held at publish ``seq``."""
        self._all()  # a 0.1.0 state holds its copies inline: loading it reads them
        if (target, seq) in self._new_copies:
            return self._new_copies[(target, seq)]
        copy = os.path.join(self.path, KEPT_DIR, f"{target}.{seq}")
        if not os.path.exists(copy):
            raise KeysError(f"{self.file}: publish {seq} of [{target}] is no longer kept; "
                            "cannot roll back to it")
        return read_regular(copy, limit=MAX_KEPT_BYTES, where=copy)[1]

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



def _legacy_bytes(text: str) -> bytes:
    """A kept copy as 0.1.0 stored it in state.json: PEM text, or "base64:..." if binary."""
    if text.startswith("base64:"):
        import base64
        return base64.b64decode(text[len("base64:"):])
    return text.encode("ascii")


# -- reading state.json as it should be, and saying what is wrong if it is not

_FIELDS: dict[str, tuple[type, ...]] = {
    "seq": (int,), "lineage": (str,), "version": (int,), "serial": (str,),
    "not_after": (str,), "names": (list,), "published_at": (str,),
    "source": (str, type(None)), "digest": (str, type(None))}


def _mapping(value: object, what: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise ValueError(f"{what}: not a JSON object")
    return value


def _list(value: object) -> list[object]:
    if not isinstance(value, list):
        raise ValueError("history: not a JSON list")
    return value


def _text_or_none(value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"'{value}' is not a time")
    return value


def _int_or_none(value: object) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"'{value}' is not a number")
    return value


def _dane(fields: dict[str, object]) -> DaneState:
    """A DaneState from its JSON, each field of its type."""
    held = _int_or_none(fields.get("held"))
    lists = {}
    for key in ("publish", "retire"):
        items = fields.get(key, [])
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ValueError(f"dane field '{key}': not a list of records")
        lists[key] = tuple(items)
    return DaneState(held=held, since=_text_or_none(fields.get("since")),
                     detail=str(fields.get("detail", "")), publish=lists["publish"],
                     switch_after=_text_or_none(fields.get("switch_after")),
                     retire=lists["retire"],
                     retire_after=_text_or_none(fields.get("retire_after")),
                     retire_for=_int_or_none(fields.get("retire_for")))


def _record(value: object) -> Record:
    """A Record from its JSON, each field of its type (bool is not an int here)."""
    fields = _mapping(value, "a record")
    for key, types in _FIELDS.items():
        if key in ("source", "digest") and key not in fields:
            continue
        item = fields.get(key)
        if isinstance(item, bool) or not isinstance(item, types):
            raise ValueError(f"record field '{key}': {item!r} is not a "
                             f"{' or '.join(t.__name__ for t in types)}")
    names = fields["names"]
    assert isinstance(names, list)
    if not all(isinstance(n, str) for n in names):
        raise ValueError("record field 'names': not a list of names")
    return Record(**fields)  # type: ignore[arg-type]  # an unknown key: TypeError, caught

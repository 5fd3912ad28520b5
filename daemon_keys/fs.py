"""Safe filesystem access where a hostile local user may have planted something.

Imports only the standard library. One definition of each:

- the ``open(2)`` flags: never follow a symlink in the final component, never
  block on a FIFO planted where a file should be, never acquire a controlling
  terminal, never leak a descriptor into a child (:data:`READ_FILE`, :data:`READ_DIR`);
- :func:`open_dir`, the path walker: one component at a time with
  ``O_NOFOLLOW``, under an explicit symlink policy (:data:`REFUSE_LINKS` or
  :data:`RESOLVE_PARENT_LINKS`) and, for a directory to write into, the
  sendmail rule for who may own and write each directory on the way;
- :func:`read_regular`, the bounded reader of a regular file;
- temp names (``.<name>.<16 hex>.tmp``): :func:`make_temp` draws one and retries
  on a collision, :class:`Leftovers` finds what killed runs left, listing each
  directory once per run however many names it holds.
"""
from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Callable
from typing import TypeVar

from daemon_keys.acl import read_acl
from daemon_keys.errors import KeysError, UnsafePathError, UsageError, reason, write_failed
from daemon_keys.trust import fix_hint, unsafe_reason

T = TypeVar("T")

READ_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
READ_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

REFUSE_LINKS = "refuse"  # any symlink on the way is refused
RESOLVE_PARENT_LINKS = "resolve-parents"  # links before the last component are walked too
MAX_SYMLINKS = 40  # the kernel's own limit (ELOOP)

TEMP_SUFFIX = ".tmp"
TEMP_NAME_ATTEMPTS = 16
TEMP_NAME = re.compile(r"^\.(.+)\.[0-9a-f]{16}\.tmp\Z")


def random_token() -> str:
    """16 hex digits for a temp name (os.urandom: the secrets module costs the hook
    several milliseconds of imports on every run)."""
    return os.urandom(8).hex()


def temp_name(name: str) -> str:
    return f".{name}.{random_token()}{TEMP_SUFFIX}"


def open_dir(path: str, *, at: int | None = None, at_path: str = "",
             symlinks: str = REFUSE_LINKS,
             writer_uid: int | None = None, create_mode: int | None = None) -> int:
    """Open directory ``path`` one component at a time; returns a descriptor.

    ``path`` is absolute, or relative to the directory open as ``at`` (whose
    path, for messages, is ``at_path``); '..' is refused either way. A symlink
    as the last component is always refused; one before it is refused too, or,
    with :data:`RESOLVE_PARENT_LINKS` (absolute paths only), substituted and its
    target walked and checked like the rest.
    With ``writer_uid`` (for a directory we will write into), every directory
    on the way must pass :func:`.trust.unsafe_reason` (mode bits and ACL),
    trusting root and the running user (who can write anything we write
    anyway); the last one may also be
    owned by ``writer_uid``. With ``create_mode``, a missing last component is
    created with that mode. Raises :class:`UnsafePathError`, or
    :class:`WriteError` when the creation fails.
    """
    if at is None and not os.path.isabs(path):
        raise UnsafePathError(f"{path}: not an absolute path (write the full path)")
    if at is not None and symlinks != REFUSE_LINKS:
        raise ValueError("only an absolute path may resolve symlinks")
    pending = [c for c in path.split("/") if c not in ("", ".")]
    if ".." in pending:
        raise UnsafePathError(f"{path}: '..' in the path is refused (write it without)")
    euid = os.geteuid()
    fd = os.open("/", READ_DIR) if at is None else os.dup(at)
    walked = "/" if at is None else at_path
    links = 0
    try:
        while pending:
            component = pending.pop(0)
            here = os.path.join(walked, component)
            try:
                new_fd = os.open(component, READ_DIR, dir_fd=fd)
            except FileNotFoundError:
                if pending or create_mode is None:
                    raise UnsafePathError(f"{here}: directory does not exist "
                                          "(create it, or fix the path)") from None
                new_fd = _create_dir(fd, component, create_mode, here)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafePathError(f"{here}: cannot open: {reason(exc)}"
                                          ) from None
                try:
                    target = os.readlink(component, dir_fd=fd)
                except OSError:
                    raise UnsafePathError(f"{here}: not a directory (a file is where a "
                                          "directory should be)") from None
                if not pending or symlinks != RESOLVE_PARENT_LINKS:
                    raise UnsafePathError(f"{here}: is a symlink; refusing to follow it "
                                          f"(use {target} itself)") from None
                links += 1
                if links > MAX_SYMLINKS:
                    raise UnsafePathError(f"{path}: too many levels of symlinks") from None
                # Substitute the link and walk again from /: every component of
                # the resolved path is opened and checked like any other.
                resolved = os.path.normpath(os.path.join(walked, target, *pending))
                pending = [c for c in resolved.split("/") if c]
                os.close(fd)
                fd = os.open("/", READ_DIR)
                walked = "/"
                continue
            os.close(fd)
            fd = new_fd
            walked = here
            if writer_uid is not None:
                trusted = {euid, writer_uid} if not pending else {euid}
                why = unsafe_reason(os.fstat(fd), trusted, last=not pending,
                                    entries=read_acl(fd))
                if why is not None:
                    fix = fix_hint(why, walked, "chown root: DIR; chmod go-w DIR")
                    raise UnsafePathError(
                        f"{walked}: unsafe directory, {why} (make it root-owned and "
                        f"writable by root only: {fix})")
        return fd
    except BaseException:
        os.close(fd)
        raise


def _create_dir(parent_fd: int, name: str, mode: int, where: str) -> int:
    try:
        os.mkdir(name, mode, dir_fd=parent_fd)
        os.chmod(name, mode, dir_fd=parent_fd, follow_symlinks=False)  # umask can only narrow
        os.fsync(parent_fd)
        return os.open(name, READ_DIR, dir_fd=parent_fd)
    except OSError as exc:
        raise write_failed(where, "creating the directory", exc) from None


def read_regular(name: str, *, dir_fd: int | None = None, limit: int, where: str,
                 error: type[KeysError] = UnsafePathError, hint: str = "",
                 check: Callable[[int, os.stat_result], None] | None = None
                 ) -> tuple[os.stat_result, bytes]:
    """Open ``name`` without following a symlink, check it is a regular file, read at most
    ``limit`` bytes. Returns its stat (of the open descriptor) and its bytes.
    ``check(fd, stat)``, when given, judges the open file before a byte is read
    (the trust rule reads its ACL through the descriptor) and raises to refuse it.

    Every failure is one ``error`` naming ``where``: missing, a symlink, not a
    regular file, unreadable, larger than ``limit``; ``hint`` is added to the
    ones a user fixes by creating or replacing the file.
    """
    tail = f" ({hint})" if hint else ""
    try:
        fd = os.open(name, READ_FILE, dir_fd=dir_fd)
    except FileNotFoundError:
        raise error(f"{where}: missing{tail}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise error(f"{where}: is a symlink; refusing to follow it{tail}") from None
        raise error(f"{where}: cannot open: {reason(exc)}{tail}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{where}: not a regular file{tail}")
        if check is not None:
            check(fd, st)
        chunks = []
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise error(f"{where}: cannot read: {reason(exc)}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        raise error(f"{where}: larger than {limit} bytes; not what belongs here")
    return st, data


def exists_at(dir_fd: int, name: str) -> bool:
    """Whether ``name`` exists in the directory ``dir_fd`` (a symlink is not followed).
    Any error but "no such file" is one :class:`KeysError` naming it."""
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise KeysError(f"{name}: {reason(exc)}") from None
    return True


def require_dir(path: str, missing: str) -> None:
    """``path`` is a directory; else :class:`UsageError` ``missing`` when there is none
    there, or one line saying why it cannot be looked at (a user who may not read
    certbot's 0700 directories gets "Permission denied", not "no such lineage")."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UsageError(missing) from None
    except OSError as exc:
        raise KeysError(f"{path}: cannot look at it: {reason(exc)} (run as root, or as "
                        "the user certbot runs as)") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(missing)


def make_temp(dir_fd: int, name: str, create: Callable[[str], T], where: str,
              what: str = "a temp file") -> tuple[T, str]:
    """Create something at a fresh temp name beside ``name``: ``create(temp)`` must fail
    with ``FileExistsError`` when the name is taken (``O_EXCL``, ``mkdir``, ``symlink``).
    A taken name is never reused: another is drawn. Returns what ``create`` returned
    and the temp name."""
    for _ in range(TEMP_NAME_ATTEMPTS):
        temp = temp_name(name)
        try:
            return create(temp), temp
        except FileExistsError:
            continue  # planted or colliding name: never reuse it, draw another
        except OSError as exc:
            raise write_failed(where, f"creating {what}", exc) from None
    raise UnsafePathError(f"{where}: {TEMP_NAME_ATTEMPTS} random temp names were all taken "
                          "(someone is planting files in this directory?)")


class Leftovers:
    """Temp names killed runs left, by directory and name.

    Each directory is listed once, the first time one of its names is asked
    about; a run that writes N files into one directory lists it once, not N
    times. Only names of the exact form ``.<name>.<16 hex>.tmp`` are ours.
    """

    def __init__(self) -> None:
        self._dirs: dict[tuple[int, int], dict[str, list[str]]] = {}

    def _index(self, dir_fd: int) -> dict[str, list[str]]:
        st = os.fstat(dir_fd)
        key = (st.st_dev, st.st_ino)
        index = self._dirs.get(key)
        if index is None:
            index = {}
            for entry in os.listdir(dir_fd):
                match = TEMP_NAME.match(entry)
                if match:
                    index.setdefault(match.group(1), []).append(entry)
            self._dirs[key] = index
        return index

    def take(self, dir_fd: int, name: str) -> list[str]:
        """The leftover temp names for ``name`` (each handed out once per run)."""
        return self._index(dir_fd).pop(name, [])

    def names(self, dir_fd: int) -> list[str]:
        """Every name in the directory that has leftovers."""
        return list(self._index(dir_fd))

    def remove(self, dir_fd: int, name: str) -> list[str]:
        """Unlink the leftover temp files of ``name``; returns the ones removed.
        ``unlink`` never follows a symlink."""
        removed = []
        for entry in self.take(dir_fd, name):
            try:
                os.unlink(entry, dir_fd=dir_fd)
                removed.append(entry)
            except FileNotFoundError:
                pass
        return removed

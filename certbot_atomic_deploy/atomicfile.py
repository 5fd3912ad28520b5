"""Atomic, durable file replacement with owner and mode set before the first byte.

Imports no certbot and no cryptography.

Contract
--------
:func:`write_file_atomic` replaces ``name`` inside the directory open as
``dir_fd`` so that any reader, at any instant, opens either the complete old
file or the complete new one, and so that no byte of the new content is ever
readable by anyone the final owner, group and mode would not allow. After it
returns, the new content survives a power loss.

Steps (marked ``# (N)`` in the body):

1. Refuse a destination that is a symlink, a directory or anything but a
   regular file: ``rename(2)`` would replace a symlink rather than follow it,
   but a link there means someone else has been writing in this directory.
2. Create a temp file in the destination directory itself (``rename(2)`` only
   works within one filesystem), named ``.<name>.<random>.tmp``, with
   ``O_CREAT|O_EXCL|O_NOFOLLOW`` and mode 0600: a planted file or symlink at
   that name makes the open fail (and another name is tried), it never
   redirects the write.
3. ``fchown`` then ``fchmod`` the descriptor to the final owner and mode while
   the file is still empty. (The chown is done first: the kernel clears
   setuid/setgid bits on chown, and the mode must be the last word.)
4. Write every byte, then ``fsync`` the file.
5. ``rename`` the temp name over the destination (atomic for readers).
6. ``fsync`` the directory, so the rename itself is durable.

On any failure up to (5) the temp file is unlinked and the destination is
untouched; if only (6) fails, the new content is in place (readers see it) but
its durability is not promised, and the error says so.
If the process dies between (2) and (5), a ``.<name>.*.tmp`` file remains:
:func:`remove_leftovers` (called by every run before it writes) removes them.

Not guaranteed: readers that open two files one after the other can still see
one old and one new file; publish a single combined file, or a versioned
directory switched by one symlink, for that (see :mod:`.publish`).

:func:`open_directory` opens a destination directory safely: it walks the path
one component at a time with ``O_NOFOLLOW``, resolves symlinks in intermediate
components itself, and refuses any directory on the way that someone other
than root or the running user (or the target's owner, for the last one) could
write to, the way sendmail refuses unsafe parents.
"""
from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterable

from certbot_atomic_deploy.errors import UnsafePathError, WriteError
from certbot_perms.flags import READ_DIR

TEMP_SUFFIX = ".tmp"
TEMP_NAME_ATTEMPTS = 16
MAX_SYMLINKS = 40  # the kernel's own limit (ELOOP)

_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
TEMP_CREATE_MODE = 0o600


def random_token() -> str:
    """16 hex digits for a temp name (os.urandom: the secrets module costs the hook
    several milliseconds of imports on every run)."""
    return os.urandom(8).hex()


def temp_prefix(name: str) -> str:
    return f".{name}."


def _describe_errno(exc: OSError) -> str:
    return os.strerror(exc.errno) if exc.errno else str(exc)


def _hint(exc: OSError) -> str:
    if exc.errno == errno.EBUSY:
        return ("the destination is a mount point (a bind mount?), so nothing can be renamed "
                "over it; bind-mount its directory instead, or point the target elsewhere")
    if exc.errno == errno.EXDEV:
        return ("temp file and destination are on different filesystems (a bind mount?); "
                "point the target at a path on one filesystem")
    if exc.errno == errno.EPERM:
        return "the file may be immutable (lsattr; chattr -i) or the filesystem refuses it"
    if exc.errno == errno.ENOSPC:
        return "the filesystem is full; free space and run again"
    if exc.errno == errno.EROFS:
        return "the filesystem is mounted read-only"
    if exc.errno == errno.EACCES:
        return "permission denied; run as root"
    return "fix the cause and run again"


def write_failed(where: str, action: str, exc: OSError) -> WriteError:
    """A WriteError in the house format: '<path>: <action> failed: <why> (<hint>)'."""
    return WriteError(f"{where}: {action} failed: {_describe_errno(exc)} ({_hint(exc)})")


def unsafe_reason(st: os.stat_result, trusted_uids: Iterable[int], *, last: bool) -> str | None:
    """Why a directory with this stat is unsafe to write under, or None.

    Safe: owned by root or a trusted uid, and writable by no one else (group
    write counts only for a group other than root). An ancestor may also be
    world-writable with the sticky bit (like /tmp): others cannot replace
    entries they do not own there. The destination directory itself may not.
    """
    if st.st_uid != 0 and st.st_uid not in trusted_uids:
        return f"owned by uid {st.st_uid}, not root"
    mode = st.st_mode
    if mode & stat.S_IWOTH:
        writer = "others"
    elif mode & stat.S_IWGRP and st.st_gid != 0:
        writer = f"group {st.st_gid}"
    else:
        return None
    if mode & stat.S_ISVTX and not last:
        return None
    return f"writable by {writer} (mode {stat.S_IMODE(mode):04o})"


def open_directory(path: str, *, owner_uid: int = 0, create_mode: int | None = None) -> int:
    """Open directory ``path`` for writing into it, refusing unsafe ones. Returns an fd.

    Every directory on the way must pass :func:`unsafe_reason`, trusting root
    and the running user (who can write anything we write anyway); the last
    one may also be owned by ``owner_uid``. Symlinks in intermediate components
    are resolved here, each target walked and checked like the rest; a
    symlink as the last component is refused. With ``create_mode``, a missing
    last component is created with that mode.
    """
    if not os.path.isabs(path):
        raise UnsafePathError(f"{path}: not an absolute path (write the full path)")
    pending = [c for c in path.split("/") if c not in ("", ".")]
    if ".." in pending:
        raise UnsafePathError(f"{path}: '..' in a destination path is refused "
                              "(write the path without it)")
    euid = os.geteuid()  # whoever owns us can already write what we write: trust them
    fd = os.open("/", READ_DIR)
    walked = "/"
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
                try:
                    os.mkdir(component, create_mode, dir_fd=fd)
                    os.chmod(component, create_mode, dir_fd=fd, follow_symlinks=False)
                    os.fsync(fd)
                    new_fd = os.open(component, READ_DIR, dir_fd=fd)
                except OSError as exc:
                    raise write_failed(here, "creating the directory", exc) from None
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafePathError(f"{here}: cannot open: {_describe_errno(exc)}") from None
                try:
                    target = os.readlink(component, dir_fd=fd)
                except OSError:
                    raise UnsafePathError(f"{here}: not a directory (a file is where a "
                                          "directory should be)") from None
                if not pending:
                    raise UnsafePathError(f"{here}: the destination directory is a symlink; "
                                          f"refusing to follow it (use {target} itself)") from None
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
            trusted = {euid, owner_uid} if not pending else {euid}
            why = unsafe_reason(os.fstat(fd), trusted, last=not pending)
            if why is not None:
                raise UnsafePathError(f"{walked}: unsafe directory, {why} (make it root-owned "
                                      "and writable by root only: chown root: DIR; chmod go-w DIR)")
        return fd
    except BaseException:
        os.close(fd)
        raise


def remove_leftovers(dir_fd: int, name: str) -> list[str]:
    """Unlink temp files a killed run left for ``name``; returns their names.

    Only names of the exact form ``.<name>.<token>.tmp`` are touched;
    ``unlink`` never follows a symlink.
    """
    prefix = temp_prefix(name)
    removed = []
    for entry in os.listdir(dir_fd):
        if entry.startswith(prefix) and entry.endswith(TEMP_SUFFIX):
            try:
                os.unlink(entry, dir_fd=dir_fd)
                removed.append(entry)
            except FileNotFoundError:
                pass
    return removed


def check_replaceable(dir_fd: int, name: str, where: str) -> os.stat_result | None:
    """The stat of the current destination if it may be replaced, None if absent. # (1)"""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(f"{where}: is a symlink; refusing to replace or follow it "
                              "(remove it if it is yours, and run again)")
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePathError(f"{where}: exists and is not a regular file "
                              "(a directory where a file should be?); remove it and run again")
    if st.st_nlink > 1:
        # Replacing this name would leave the old key readable under the other one.
        raise UnsafePathError(f"{where}: has {st.st_nlink} hard links; another name holds "
                              f"these bytes (find it: find / -xdev -samefile {where}; remove "
                              "the other link and run again)")
    return st


def create_temp(dir_fd: int, name: str, where: str) -> tuple[int, str]:
    """Create and open a fresh temp file beside ``name``. # (2)"""
    for _ in range(TEMP_NAME_ATTEMPTS):
        temp = f"{temp_prefix(name)}{random_token()}{TEMP_SUFFIX}"
        try:
            return os.open(temp, _NEW_FILE_FLAGS, TEMP_CREATE_MODE, dir_fd=dir_fd), temp
        except FileExistsError:
            continue  # planted or colliding name: never reuse it, draw another
        except OSError as exc:
            raise write_failed(where, "creating a temp file", exc) from None
    raise UnsafePathError(f"{where}: {TEMP_NAME_ATTEMPTS} random temp names were all taken "
                          "(someone is planting files in this directory?)")


def write_new_file(dir_fd: int, name: str, data: bytes, *, uid: int, gid: int, mode: int,
                   where: str) -> None:
    """Create ``name`` (which must not exist) with owner and mode set before any byte.

    Steps (2) to (4) of the module contract on a final name, for files inside a
    directory no reader can see yet (a version directory being filled).
    """
    try:
        fd = os.open(name, _NEW_FILE_FLAGS, TEMP_CREATE_MODE, dir_fd=dir_fd)  # (2)
    except OSError as exc:
        raise write_failed(where, "creating the file", exc) from None
    try:
        _fill(fd, data, uid=uid, gid=gid, mode=mode, where=where)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=dir_fd)
        raise
    os.close(fd)


def _fill(fd: int, data: bytes, *, uid: int, gid: int, mode: int, where: str) -> None:
    """Steps (3) and (4): owner and mode on the empty file, then the bytes, then fsync."""
    try:
        # The file was created 0600 (umask can only narrow that); chown first,
        # as the kernel clears setuid/setgid on chown, then the final mode.
        st = os.fstat(fd)
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    except OSError as exc:
        raise write_failed(where, f"setting owner {uid}:{gid} and mode {mode:04o}",
                           exc) from None
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except OSError as exc:
        raise write_failed(where, "writing", exc) from None


def write_file_atomic(dir_fd: int, name: str, data: bytes, *, uid: int, gid: int, mode: int,
                      where: str) -> None:
    """Replace ``name`` in ``dir_fd`` with ``data``, owned uid:gid with ``mode``.

    Preconditions: ``dir_fd`` comes from :func:`open_directory` (a safe
    directory); ``name`` is a plain file name. ``where`` is the destination's
    full path, for messages. Raises :class:`WriteError` or
    :class:`UnsafePathError`; on either the destination is as it was.
    """
    if "/" in name or name in ("", ".", ".."):
        raise UnsafePathError(f"{where}: '{name}' is not a plain file name")
    check_replaceable(dir_fd, name, where)  # (1)
    fd, temp = create_temp(dir_fd, name, where)  # (2)
    try:
        _fill(fd, data, uid=uid, gid=gid, mode=mode, where=where)  # (3) (4)
        os.close(fd)
        fd = -1
        try:
            os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)  # (5)
        except OSError as exc:
            raise write_failed(where, "renaming the temp file over it", exc) from None
        temp = ""
        try:
            os.fsync(dir_fd)  # (6)
        except OSError as exc:
            raise write_failed(where, "syncing the directory", exc) from None
    finally:
        if fd >= 0:
            os.close(fd)
        if temp:
            with contextlib.suppress(OSError):  # else the next run's remove_leftovers does
                os.unlink(temp, dir_fd=dir_fd)

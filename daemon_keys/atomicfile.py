"""Atomic, durable file replacement with owner and mode set before the first byte.

Imports only the standard library and the core's :mod:`.fs` and :mod:`.errors`.

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
3. Take away any access ACL the file inherited from the directory's default
   ACL (while it is still 0600 its mask lets the named entries do nothing;
   after the final ``fchmod`` they could open it, and an open descriptor
   outlives any later change), then ``fchown`` and ``fchmod`` the descriptor to
   the final owner and mode while the file is still empty: the mode alone says
   who may read. (The chown is done first: the kernel clears setuid/setgid
   bits on chown, and the mode must be the last word.)
4. Write every byte, then ``fsync`` the file.
5. ``rename`` the temp name over the destination (atomic for readers).
6. ``fsync`` the directory, so the rename itself is durable.

On any failure up to (5) the temp file is unlinked and the destination is
untouched; if only (6) fails, the new content is in place (readers see it) but
its durability is not promised, and the error says so.
If the process dies between (2) and (5), a ``.<name>.*.tmp`` file remains:
:class:`~.fs.Leftovers` (asked by every run before it writes) removes them.

Not guaranteed: readers that open two files one after the other can still see
one old and one new file; publish a single combined file, or a versioned
directory switched by one symlink, for that (see ``certbot_atomic_deploy.publish``).

:func:`open_for_writing` opens a destination directory safely: it walks the path
one component at a time with ``O_NOFOLLOW``, resolves symlinks in intermediate
components itself, and refuses any directory on the way that someone other
than root or the running user (or the target's owner, for the last one) could
write to, the way sendmail refuses unsafe parents (:func:`.fs.open_dir`).
"""
from __future__ import annotations

import contextlib
import os
import stat

from daemon_keys import acl
from daemon_keys.errors import UnsafePathError, write_failed
from daemon_keys.fs import RESOLVE_PARENT_LINKS, make_temp, open_dir

_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
TEMP_CREATE_MODE = 0o600


def open_for_writing(path: str, *, owner_uid: int = 0, create_mode: int | None = None) -> int:
    """Open the directory ``path`` to write into it; refuse an unsafe one. Returns an fd.

    The walk of :func:`.fs.open_dir` with intermediate symlinks resolved and every
    directory checked; the last one may also be owned by ``owner_uid``. With
    ``create_mode``, a missing last component is created with that mode.
    """
    return open_dir(path, symlinks=RESOLVE_PARENT_LINKS, writer_uid=owner_uid,
                    create_mode=create_mode)

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
    return make_temp(dir_fd, name, lambda temp: os.open(
        temp, _NEW_FILE_FLAGS, TEMP_CREATE_MODE, dir_fd=dir_fd), where)


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
        acl.clear(fd)  # inherited from a default ACL, masked to nothing while 0600
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

    Preconditions: ``dir_fd`` comes from :func:`open_for_writing` (a safe
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
            with contextlib.suppress(OSError):  # else the next run's Leftovers do
                os.unlink(temp, dir_fd=dir_fd)

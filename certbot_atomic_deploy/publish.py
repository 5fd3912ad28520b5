"""Publish a target's files: one file by rename, or a versioned directory by one symlink.

Imports no certbot, no cryptography and no configuration: it is given what to
write, a :class:`NewFile` (bytes, owner, group, mode) per name.

File: :func:`daemon_keys.atomicfile.write_file_atomic` on the destination.

Versioned directory ``DIR`` (``DIR/current -> vN``):

1. remove what a killed run left (``.vN.*.tmp`` directories, ``.current.*.tmp`` links);
2. create ``DIR/.vN.<random>.tmp`` mode 0700, invisible to readers, and at once
   (its inherited mask still lets nobody in) take away the access and default ACL
   it inherited from ``DIR``, so neither it nor the files made in it let in anyone
   their mode does not;
3. create each file in it with :func:`daemon_keys.atomicfile.write_new_file` (owner and
   mode before the first byte, fsync);
4. chmod the version directory 0755 (each key file keeps its own mode), fsync
   it, rename it to ``vN``, fsync ``DIR``;
5. make a symlink ``.current.<random>.tmp -> vN`` and rename it over
   ``current``: one atomic switch of the whole set; fsync ``DIR``; set the
   mtime of the version switched away from to now (before and after the
   switch): from then on it says when that version stopped being current;
6. remove versions beyond ``keep`` older ones (never the current one), and
   only those that stopped being current at least ``keep_seconds`` ago.

A reader's time guarantee: a reader that resolved ``current`` (or opened it) may
go on reading that version's files for ``keep_seconds`` (default one day) after
the switch away from it, however many publishes come meanwhile and however
long the scheduler keeps the reader waiting; ``keep`` alone is a count and
would hold only while publishes are rarer than readers are slow.

Readers that need a consistent key and certificate must open
``DIR/current/`` once and read relative to that descriptor, or read
``combined.pem`` (one file): two opens of ``DIR/current/x`` can straddle a switch.

Each publish returns an :class:`Undo` that puts the previous state back (used
when a target's check command fails). Leftover temp names are found through
one :class:`~daemon_keys.fs.Leftovers` per run, which lists each directory once.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import time
from collections.abc import Callable
from typing import NamedTuple

from daemon_keys import acl
from daemon_keys.atomicfile import (
    check_replaceable,
    open_for_writing,
    write_file_atomic,
    write_new_file,
)
from daemon_keys.errors import KeysError, UnsafePathError, WriteError, write_failed
from daemon_keys.fs import READ_DIR, Leftovers, make_temp, read_regular

CURRENT = "current"
VERSION_DIR_MODE = 0o755
TARGET_DIR_MODE = 0o755
MAX_FILE_BYTES = 1 << 22  # what we compare with or keep for an undo: keys, chains, keystores
_VERSION = re.compile(r"^v([0-9]+)\Z")
DEFAULT_KEEP_SECONDS = 86400  # how long a version outlives its switch, at least


class NewFile(NamedTuple):
    """What to write under one name: its bytes, owner, group and mode."""

    data: bytes
    uid: int
    gid: int
    mode: int


class Undo(NamedTuple):
    description: str
    action: Callable[[], None]


def read_if_exact(dir_fd: int, name: str, uid: int, gid: int, mode: int) -> bytes | None:
    """The file's bytes if it is a regular file with exactly this owner and mode and no
    ACL entry beyond them (an entry added by hand lets someone else read), else None."""
    def no_acl(fd: int, st: os.stat_result) -> None:
        if acl.read_acl(fd) is not None:
            raise KeysError(f"{name}: has an ACL")
    try:
        st, data = read_regular(name, dir_fd=dir_fd, limit=MAX_FILE_BYTES, where=name,
                                check=no_acl)
    except KeysError:
        return None  # absent, unreadable or widened counts as different: a publish mends it
    if (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) != (uid, gid, mode):
        return None
    return data


def _is_written(dir_fd: int, name: str, new: NewFile) -> bool:
    return read_if_exact(dir_fd, name, new.uid, new.gid, new.mode) == new.data


def _open_plain(path: str) -> int | None:
    try:
        return os.open(path, READ_DIR)
    except OSError:
        return None


def current_version_dir(dir_fd: int) -> str | None:
    """The ``vN`` that ``current`` names, or None."""
    try:
        link = os.readlink(CURRENT, dir_fd=dir_fd)
    except OSError:
        return None
    return link if _VERSION.match(link) else None


def read_file_if_exact(path: str, uid: int, gid: int, mode: int) -> bytes | None:
    """The file at ``path`` if it has exactly this owner and mode, else None."""
    dir_fd = _open_plain(os.path.dirname(path))
    if dir_fd is None:
        return None
    try:
        return read_if_exact(dir_fd, os.path.basename(path), uid, gid, mode)
    finally:
        os.close(dir_fd)


def file_in_place(path: str, new: NewFile) -> bool:
    """Whether ``path`` already holds exactly these bytes, owner and mode."""
    return read_file_if_exact(path, new.uid, new.gid, new.mode) == new.data


def directory_in_place(directory: str, files: dict[str, NewFile]) -> bool:
    """Whether ``directory/current/`` already holds exactly these files, owners and modes."""
    dir_fd = _open_plain(directory)
    if dir_fd is None:
        return False
    try:
        version = current_version_dir(dir_fd)
        if version is None:
            return False
        try:
            vfd = os.open(version, READ_DIR, dir_fd=dir_fd)
        except OSError:
            return False
        try:
            return all(_is_written(vfd, name, new) for name, new in files.items())
        finally:
            os.close(vfd)
    finally:
        os.close(dir_fd)


def _current_file(dir_fd: int, name: str, where: str, new: NewFile) -> NewFile | None:
    """The current ``name`` (content, owner, group, mode), for an undo; None if absent.

    An undo puts back the owner and group it had (a daemon reading as its group must
    still read it), never a mode wider than before, and, unless the new file is
    itself public, nothing for others (a key that was 0644 comes back 0640)."""
    try:
        st, data = read_regular(name, dir_fd=dir_fd, limit=MAX_FILE_BYTES, where=where)
    except KeysError:
        return None  # absent; anything else there is refused by write_file_atomic's step (1)
    mode = stat.S_IMODE(st.st_mode) & 0o777
    if not new.mode & stat.S_IROTH:
        mode &= ~stat.S_IRWXO
    return NewFile(data, st.st_uid, st.st_gid, mode)


def publish_file(path: str, new: NewFile, leftovers: Leftovers) -> Undo:
    """Replace the file at ``path`` with ``new``; return how to put it back."""
    name = os.path.basename(path)
    dir_fd = open_for_writing(os.path.dirname(path), owner_uid=new.uid)
    try:
        leftovers.remove(dir_fd, name)
        previous = _current_file(dir_fd, name, path, new)
        write_file_atomic(dir_fd, name, new.data, uid=new.uid, gid=new.gid, mode=new.mode,
                          where=path)
    finally:
        os.close(dir_fd)

    def undo() -> None:
        fd = open_for_writing(os.path.dirname(path), owner_uid=new.uid)
        try:
            if previous is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=fd)
                os.fsync(fd)
            else:
                write_file_atomic(fd, name, previous.data, uid=previous.uid,
                                  gid=previous.gid, mode=previous.mode, where=path)
        finally:
            os.close(fd)

    return Undo(f"{path}: restored the previous content" if previous is not None
                else f"{path}: removed (there was none before)", undo)


def versions(dir_fd: int) -> list[int]:
    """The version numbers present in a versioned directory, ascending."""
    found = []
    for entry in os.listdir(dir_fd):
        m = _VERSION.match(entry)
        if m:
            found.append(int(m.group(1)))
    return sorted(found)


def _remove_tree(parent_fd: int, name: str) -> None:
    """Remove a version directory of plain files; never follows a symlink."""
    try:
        fd = os.open(name, READ_DIR, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOENT,):
            return
        raise
    try:
        for entry in os.listdir(fd):
            os.unlink(entry, dir_fd=fd)  # a subdirectory here is not ours: EISDIR stops us
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)


def _remove_directory_leftovers(dir_fd: int, leftovers: Leftovers) -> None:
    """Step (1): ``.vN.*.tmp`` directories and ``.current.*.tmp`` links a killed run left."""
    for name in leftovers.names(dir_fd):
        if _VERSION.match(name):
            for entry in leftovers.take(dir_fd, name):
                _remove_tree(dir_fd, entry)
    leftovers.remove(dir_fd, CURRENT)


def switch_current(dir_fd: int, version: str | None, where: str) -> None:
    """Point ``current`` at ``version`` with one rename (None removes it). Step (5)."""
    try:
        st = os.stat(CURRENT, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode):
            raise UnsafePathError(f"{where}/{CURRENT}: exists and is not a symlink; "
                                  "refusing to replace it (move it away and run again)")
    except FileNotFoundError:
        pass
    if version is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(CURRENT, dir_fd=dir_fd)
        os.fsync(dir_fd)
        return
    _, temp = make_temp(dir_fd, CURRENT, lambda t: os.symlink(version, t, dir_fd=dir_fd),
                        f"{where}/{CURRENT}", "the new link")
    try:
        os.rename(temp, CURRENT, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=dir_fd)
        raise write_failed(f"{where}/{CURRENT}", "switching the link", exc) from None
    try:
        os.fsync(dir_fd)
    except OSError as exc:
        raise write_failed(where, "syncing the directory", exc) from None


def publish_directory(directory: str, files: dict[str, NewFile], *, owner_uid: int,
                      keep: int, leftovers: Leftovers,
                      keep_seconds: float = DEFAULT_KEEP_SECONDS) -> Undo:
    """Fill a new version directory and switch ``current`` to it; return the undo.

    ``owner_uid`` may own ``directory`` (see :func:`open_for_writing`); ``keep``
    older versions are kept for rollback, and every older version for at least
    ``keep_seconds`` after it stopped being current (for its readers).
    """
    where = directory
    dir_fd = open_for_writing(where, owner_uid=owner_uid, create_mode=TARGET_DIR_MODE)
    try:
        _remove_directory_leftovers(dir_fd, leftovers)  # (1)
        check_replaceable_link(dir_fd, where)
        previous = current_version_dir(dir_fd)
        final = f"v{(versions(dir_fd) or [0])[-1] + 1}"
        _, temp = make_temp(dir_fd, final, lambda t: os.mkdir(t, 0o700, dir_fd=dir_fd),
                            f"{where}/{final}", "the version directory")  # (2)
        try:
            vfd = os.open(temp, READ_DIR, dir_fd=dir_fd)
            try:
                acl.clear(vfd, directory=True)
            except OSError:
                os.close(vfd)
                raise
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.rmdir(temp, dir_fd=dir_fd)
            raise write_failed(f"{where}/{temp}", "opening the version directory",
                               exc) from None
        try:
            for name, new in files.items():  # (3)
                write_new_file(vfd, name, new.data, uid=new.uid, gid=new.gid, mode=new.mode,
                               where=f"{where}/{final}/{name}")
            try:
                os.fchmod(vfd, VERSION_DIR_MODE)  # (4)
                os.fsync(vfd)
            except OSError as exc:
                raise write_failed(f"{where}/{final}", "finishing the version directory",
                                   exc) from None
        except BaseException:
            os.close(vfd)
            with contextlib.suppress(OSError):
                _remove_tree(dir_fd, temp)
            raise
        os.close(vfd)
        try:
            os.rename(temp, final, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            os.fsync(dir_fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                _remove_tree(dir_fd, temp)
            raise write_failed(f"{where}/{final}", "renaming the version directory",
                               exc) from None
        try:
            _retire(dir_fd, previous)  # (5)
            switch_current(dir_fd, final, where)
            _retire(dir_fd, previous)
        except (WriteError, UnsafePathError):
            # Only a version nobody points at may go: if the rename went through
            # and the directory fsync failed, readers already see ``final``.
            if current_version_dir(dir_fd) != final:
                with contextlib.suppress(OSError):
                    _remove_tree(dir_fd, final)
            raise
        prune(dir_fd, keep, keep_seconds)  # (6)
    finally:
        os.close(dir_fd)

    def undo() -> None:
        fd = open_for_writing(where, owner_uid=owner_uid)
        try:
            switch_current(fd, previous, where)
            with contextlib.suppress(OSError):
                _remove_tree(fd, final)
            os.fsync(fd)
        finally:
            os.close(fd)

    return Undo(f"{where}/{CURRENT}: back to {previous}" if previous
                else f"{where}/{CURRENT}: removed (there was none before)", undo)


def check_replaceable_link(dir_fd: int, where: str) -> None:
    """``current`` must be absent or a symlink to one of our version directories."""
    try:
        st = os.stat(CURRENT, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISLNK(st.st_mode):
        check_replaceable(dir_fd, CURRENT, f"{where}/{CURRENT}")  # explains what it is
        raise UnsafePathError(f"{where}/{CURRENT}: a regular file, not a symlink; refusing "
                              "(move it away and run again)")
    link = os.readlink(CURRENT, dir_fd=dir_fd)
    if not _VERSION.match(link):
        raise UnsafePathError(f"{where}/{CURRENT}: points to '{link}', not to a version "
                              "directory here; refusing to replace it (remove it if it is yours)")


def _retire(dir_fd: int, version: str | None) -> None:
    """Stamp ``version``'s mtime with now: when it stopped being current (step 5)."""
    if version is None:
        return
    with contextlib.suppress(FileNotFoundError):
        os.utime(version, dir_fd=dir_fd, follow_symlinks=False)


def _retired_long_enough(dir_fd: int, version: str, keep_seconds: float, now: float) -> bool:
    try:
        st = os.stat(version, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return now - st.st_mtime >= keep_seconds


def prune(dir_fd: int, keep: int, keep_seconds: float = DEFAULT_KEEP_SECONDS) -> list[str]:
    """Remove versions older than the ``keep`` before the current one that stopped being
    current at least ``keep_seconds`` ago (their mtime, stamped at the switch)."""
    current = current_version_dir(dir_fd)
    present = versions(dir_fd)
    if current is None:
        return []
    newest_kept = int(current[1:])
    older = [n for n in present if n < newest_kept]
    now = time.time()
    doomed = [n for n in older[:max(0, len(older) - keep)]
              if _retired_long_enough(dir_fd, f"v{n}", keep_seconds, now)]
    for number in doomed:
        _remove_tree(dir_fd, f"v{number}")
    if doomed:
        os.fsync(dir_fd)
    return [f"v{n}" for n in doomed]


def rollback_directory(directory: str, owner_uid: int) -> str:
    """Switch ``current`` to the newest version older than it; return that version."""
    where = directory
    dir_fd = open_for_writing(where, owner_uid=owner_uid)
    try:
        current = current_version_dir(dir_fd)
        if current is None:
            raise WriteError(f"{where}/{CURRENT}: missing; nothing to roll back")
        older = [n for n in versions(dir_fd) if n < int(current[1:])]
        if not older:
            raise WriteError(f"{where}: no version older than {current} is kept "
                             "(raise keep to roll back further)")
        _retire(dir_fd, current)
        switch_current(dir_fd, f"v{older[-1]}", where)
        _retire(dir_fd, current)
        return f"v{older[-1]}"
    finally:
        os.close(dir_fd)

"""Publish a target's files: one file by rename, or a versioned directory by one symlink.

Imports no certbot and no cryptography.

File target: :func:`~.atomicfile.write_file_atomic` on the destination.

Versioned directory ``DIR`` (``DIR/current -> vN``):

1. remove what a killed run left (``.vN.*.tmp`` directories, ``.current.*.tmp`` links);
2. create ``DIR/.vN.<random>.tmp`` mode 0700, invisible to readers;
3. create each file in it with :func:`~.atomicfile.write_new_file` (owner and
   mode before the first byte, fsync);
4. chmod the version directory 0755 (each key file keeps its own mode), fsync
   it, rename it to ``vN``, fsync ``DIR``;
5. make a symlink ``.current.<random>.tmp -> vN`` and rename it over
   ``current``: one atomic switch of the whole set; fsync ``DIR``;
6. remove versions beyond ``keep`` older ones (never the current one).

Readers that need a consistent key and certificate must open
``DIR/current/`` once and read relative to that descriptor, or read
``combined.pem`` (one file): two opens of ``DIR/current/x`` can straddle a switch.

Each publish returns an :class:`Undo` that puts the previous state back (used
when a target's check command fails).
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from collections.abc import Callable
from typing import NamedTuple

from certbot_atomic_deploy.atomicfile import (
    TEMP_SUFFIX,
    check_replaceable,
    open_directory,
    random_token,
    remove_leftovers,
    write_failed,
    write_file_atomic,
    write_new_file,
)
from certbot_atomic_deploy.config import Target, file_mode
from certbot_atomic_deploy.errors import UnsafePathError, WriteError
from certbot_atomic_deploy.pem import DIRECTORY_FILES
from certbot_perms.flags import READ_DIR, READ_FILE

CURRENT = "current"
VERSION_DIR_MODE = 0o755
TARGET_DIR_MODE = 0o755
_VERSION = re.compile(r"^v([0-9]+)$")


class Undo(NamedTuple):
    description: str
    action: Callable[[], None]


def target_files(target: Target) -> dict[str, str]:
    """File name -> format, for what the target holds."""
    if target.path is not None and target.format is not None:
        return {os.path.basename(target.path): target.format}
    return dict(DIRECTORY_FILES)


def _read_if_same_owner(dir_fd: int, name: str, uid: int, gid: int, mode: int) -> bytes | None:
    """The file's bytes if it is a regular file with exactly this owner and mode, else None."""
    try:
        fd = os.open(name, READ_FILE, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if (not stat.S_ISREG(st.st_mode) or (st.st_uid, st.st_gid) != (uid, gid)
                or stat.S_IMODE(st.st_mode) != mode):
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    except OSError:
        return None  # unreadable counts as different: the publish says what is wrong
    finally:
        os.close(fd)


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


def in_place(target: Target, files: dict[str, bytes]) -> bool:
    """Whether the destination already holds exactly these bytes, owner and modes."""
    if target.path is not None:
        dir_fd = _open_plain(os.path.dirname(target.path))
        if dir_fd is None:
            return False
        try:
            name = os.path.basename(target.path)
            mode = file_mode(target, target.format or "")
            return _read_if_same_owner(dir_fd, name, target.uid, target.gid, mode) == files[name]
        finally:
            os.close(dir_fd)
    dir_fd = _open_plain(target.directory or "")
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
            return all(
                _read_if_same_owner(vfd, name, target.uid, target.gid,
                                    file_mode(target, fmt)) == files[name]
                for name, fmt in DIRECTORY_FILES.items())
        finally:
            os.close(vfd)
    finally:
        os.close(dir_fd)


def keystore_in_place(target: Target, digest: str | None) -> bool:
    """Whether a pkcs12 target's file is the one recorded (sha256 ``digest``), owner and mode."""
    if digest is None:
        return False
    dir_fd = _open_plain(os.path.dirname(target.path or "/"))
    if dir_fd is None:
        return False
    try:
        data = _read_if_same_owner(dir_fd, os.path.basename(target.path or ""), target.uid,
                                   target.gid, file_mode(target, target.format or ""))
    finally:
        os.close(dir_fd)
    import hashlib
    return data is not None and hashlib.sha256(data).hexdigest() == digest


def read_current_bytes(target: Target) -> bytes | None:
    """The file target's current content (any owner), for an undo; None if absent."""
    if target.path is None:
        return None
    try:
        fd = os.open(target.path, READ_FILE)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def publish_file(target: Target, data: bytes) -> Undo:
    """Replace the file target's destination with ``data``; return how to put it back."""
    path = target.path or ""
    name = os.path.basename(path)
    previous = read_current_bytes(target)
    dir_fd = open_directory(os.path.dirname(path), owner_uid=target.uid)
    try:
        remove_leftovers(dir_fd, name)
        mode = file_mode(target, target.format or "")
        write_file_atomic(dir_fd, name, data, uid=target.uid, gid=target.gid, mode=mode,
                          where=path)
    finally:
        os.close(dir_fd)

    def undo() -> None:
        fd = open_directory(os.path.dirname(path), owner_uid=target.uid)
        try:
            if previous is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=fd)
                os.fsync(fd)
            else:
                write_file_atomic(fd, name, previous, uid=target.uid, gid=target.gid,
                                  mode=mode, where=path)
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


def _remove_directory_leftovers(dir_fd: int) -> None:
    for entry in os.listdir(dir_fd):
        if entry.startswith(".v") and entry.endswith(TEMP_SUFFIX):
            _remove_tree(dir_fd, entry)
    remove_leftovers(dir_fd, CURRENT)


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
    for _ in range(16):
        temp = f".{CURRENT}.{random_token()}{TEMP_SUFFIX}"
        try:
            os.symlink(version, temp, dir_fd=dir_fd)
            break
        except FileExistsError:
            continue
    else:
        raise UnsafePathError(f"{where}: could not find a free temp name for the new link")
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


def publish_directory(target: Target, files: dict[str, bytes]) -> Undo:
    """Fill a new version directory and switch ``current`` to it; return the undo."""
    where = target.directory or ""
    dir_fd = open_directory(where, owner_uid=target.uid, create_mode=TARGET_DIR_MODE)
    try:
        _remove_directory_leftovers(dir_fd)  # (1)
        check_replaceable_link(dir_fd, where)
        previous = current_version_dir(dir_fd)
        number = (versions(dir_fd) or [0])[-1] + 1
        final = f"v{number}"
        temp = f".{final}.{random_token()}{TEMP_SUFFIX}"
        try:
            os.mkdir(temp, 0o700, dir_fd=dir_fd)  # (2)
            vfd = os.open(temp, READ_DIR, dir_fd=dir_fd)
        except OSError as exc:
            raise write_failed(f"{where}/{temp}", "creating the version directory", exc) from None
        try:
            for name, fmt in DIRECTORY_FILES.items():  # (3)
                write_new_file(vfd, name, files[name], uid=target.uid, gid=target.gid,
                               mode=file_mode(target, fmt), where=f"{where}/{final}/{name}")
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
            switch_current(dir_fd, final, where)  # (5)
        except (WriteError, UnsafePathError):
            # Only a version nobody points at may go: if the rename went through
            # and the directory fsync failed, readers already see ``final``.
            if current_version_dir(dir_fd) != final:
                with contextlib.suppress(OSError):
                    _remove_tree(dir_fd, final)
            raise
        prune(dir_fd, target.keep)  # (6)
    finally:
        os.close(dir_fd)

    def undo() -> None:
        fd = open_directory(where, owner_uid=target.uid)
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


def prune(dir_fd: int, keep: int) -> list[str]:
    """Remove versions older than the ``keep`` before the current one."""
    current = current_version_dir(dir_fd)
    present = versions(dir_fd)
    if current is None:
        return []
    newest_kept = int(current[1:])
    older = [n for n in present if n < newest_kept]
    doomed = older[:max(0, len(older) - keep)]
    for number in doomed:
        _remove_tree(dir_fd, f"v{number}")
    if doomed:
        os.fsync(dir_fd)
    return [f"v{n}" for n in doomed]


def rollback_directory(target: Target) -> str:
    """Switch ``current`` to the newest version older than it; return that version."""
    where = target.directory or ""
    dir_fd = open_directory(where, owner_uid=target.uid)
    try:
        current = current_version_dir(dir_fd)
        if current is None:
            raise WriteError(f"{where}/{CURRENT}: missing; nothing to roll back")
        older = [n for n in versions(dir_fd) if n < int(current[1:])]
        if not older:
            raise WriteError(f"{where}: no version older than {current} is kept "
                             "(raise keep to roll back further)")
        switch_current(dir_fd, f"v{older[-1]}", where)
        return f"v{older[-1]}"
    finally:
        os.close(dir_fd)

"""Apply a :class:`~daemon_keys.keyspec.KeySpec` to one Certbot lineage on disk.

Imports no certbot. Works on descriptors: the config dir is opened once, every
directory and key below it is opened relative to its parent with
``O_NOFOLLOW``, so a symlink planted in ``archive/`` is never followed, and
``fchown``/``fchmod`` act on exactly the inode that was checked.

What a lineage needs, for a daemon running as the key's owner or in its group:
1. every ``archive/<name>/privkeyN.pem`` (old ones too: old Certbot releases
   wrote them 0644) gets the spec's owner, group and mode, in an order that
   never opens the key to anyone outside the final spec (see :func:`apply_to_key`);
2. the directories on the way to ``live/<name>/privkey.pem`` and its target
   let that owner and group *search* them (``x``, not list), through one POSIX
   ACL entry each where they do not already; Certbot keeps ``live/`` and
   ``archive/`` 0700, and opening them 0711 would open them to everyone;
3. before a directory on the archive side is first opened to a group, any
   key in ``archive/`` that gives *others* access (0644 from old releases)
   loses those bits: until then the 0700 ``archive/`` was all that protected
   it, and the newly admitted group must not read another lineage's key.
"""
from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from daemon_keys import acl
from daemon_keys.errors import (
    KeysError,
    LineageError,
    UsageError,
    describe_os_error,
    reason,
)
from daemon_keys.fs import READ_DIR, READ_FILE, open_dir
from daemon_keys.keyspec import (
    KEY_MODE_GROUP_READ,
    KeySpec,
    has_name,
    name_of_gid,
    name_of_uid,
)

PRIVKEY_NAME = re.compile(r"^privkey[0-9]+\.pem\Z")


class ChownRefused(KeysError):
    """The kernel refused a chown (certbot not running as root)."""


@dataclass
class ApplyReport:
    """What :func:`apply_key_permissions` changed, for the user to read."""

    lineage: str
    spec: KeySpec
    changed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def split_lineage_ref(ref: str, config_dir: str) -> tuple[str, str]:
    """A lineage name or a ``.../live/<name>`` path -> (config_dir, name)."""
    if "/" not in ref:
        name = ref
    else:
        live_dir = os.path.normpath(os.path.abspath(ref))
        parent = os.path.dirname(live_dir)
        if os.path.basename(parent) != "live":
            raise UsageError(f"{ref}: not a lineage's live directory (expected "
                               "<config-dir>/live/<name>, or give the lineage name)")
        config_dir = os.path.dirname(parent)
        name = os.path.basename(live_dir)
    if name in ("", ".", "..") or name.startswith("."):
        raise UsageError(f"{ref}: not a lineage name")
    return config_dir, name


@contextmanager
def _opened(path: str, flags: int, dir_fd: int) -> Iterator[int]:
    fd = os.open(path, flags, dir_fd=dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)


def archive_relpath(live_fd: int, shown: str) -> str:
    """Where the lineage's keys live, relative to the config dir, from its privkey link.

    Certbot itself derives the archive dir from the link's target when it
    updates links, so this follows the same rule (it allows a custom archive_dir).
    """
    try:
        target = os.readlink("privkey.pem", dir_fd=live_fd)
    except FileNotFoundError:
        raise LineageError(f"{shown}/privkey.pem: missing; is this a certbot lineage?") from None
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            raise LineageError(f"{shown}/privkey.pem: is not a symlink into archive/; "
                               "is this a certbot lineage?") from None
        raise
    return os.path.normpath(os.path.join("live", os.path.basename(shown),
                                         os.path.dirname(target)))


def _narrowed_mode(st: os.stat_result, spec: KeySpec) -> int:
    """A mode that lets in nobody the current file or the final spec keeps out.

    The owner bits stay when the owner is this process itself: it can chmod
    the file back anyway, and clearing them would lock an unprivileged
    certbot out of its own key when the chown that follows is refused.
    """
    mode = stat.S_IMODE(st.st_mode) & spec.mode
    if st.st_uid not in (spec.uid, os.geteuid()):
        mode &= ~stat.S_IRWXU
    if st.st_gid != spec.gid:
        mode &= ~stat.S_IRWXG
    return mode


def apply_to_key(dir_fd: int, name: str, spec: KeySpec, shown: str,
                  report: ApplyReport) -> None:
    """Give one key file the spec, never opening it wider than the final spec.

    (1) open with O_NOFOLLOW: a symlink (Certbot's own links for a reused key,
        or a planted one) is skipped, never followed; (2) drop any extended
        ACL; (3) narrow the mode to the intersection of now and final;
        (4) fchown; (5) fchmod to the final mode. Between (3) and (5) the
        key is readable by a subset of both the old and the final readers.
    """
    try:
        fd = os.open(name, READ_FILE, dir_fd=dir_fd)  # (1)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            report.warnings.append(f"{shown}: not a regular file; left alone")
            return
        had_acl = bool(acl.named_entries(fd))
        before = (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
        after = (spec.uid, spec.gid, spec.mode)
        if before == after and not had_acl:
            return
        if had_acl:
            acl.clear(fd)  # (2)
        narrow = _narrowed_mode(st, spec)
        if narrow != before[2]:
            os.fchmod(fd, narrow)  # (3)
        if (st.st_uid, st.st_gid) != (spec.uid, spec.gid):
            try:
                os.fchown(fd, spec.uid, spec.gid)  # (4)
            except PermissionError:
                raise ChownRefused(
                    f"{shown}: cannot give the key owner {spec.owner_name} and group "
                    f"{spec.group_name}: chown is not permitted for uid {os.geteuid()} "
                    f"(run as root); left it at mode {narrow:04o}") from None
        os.fchmod(fd, spec.mode)  # (5)
        report.changed.append(f"{shown}: {name_of_uid(before[0])}:{name_of_gid(before[1])} "
                              f"{before[2]:04o}"
                              f"{' +acl' if had_acl else ''} -> {spec.describe()}")
    finally:
        os.close(fd)


def _tighten_world_readable_keys(archive_root_fd: int, shown_root: str,
                                 report: ApplyReport) -> None:
    """Remove others' bits from every key under archive/ (step 3 of the module doc)."""
    for lineage in sorted(os.listdir(archive_root_fd)):
        try:
            lineage_fd = os.open(lineage, READ_DIR, dir_fd=archive_root_fd)
        except OSError:
            continue  # not a directory, or a symlink: nothing of ours to protect there
        try:
            for entry in sorted(os.listdir(lineage_fd)):
                if not PRIVKEY_NAME.match(entry):
                    continue
                try:
                    with _opened(entry, READ_FILE, lineage_fd) as fd:
                        st = os.fstat(fd)
                        if stat.S_ISREG(st.st_mode) and st.st_mode & stat.S_IRWXO:
                            os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~stat.S_IRWXO)
                            report.changed.append(
                                f"{shown_root}/{lineage}/{entry}: removed others' access "
                                f"({stat.S_IMODE(st.st_mode):04o} -> "
                                f"{stat.S_IMODE(st.st_mode) & ~stat.S_IRWXO:04o})")
                except OSError as exc:
                    if exc.errno != errno.ELOOP:
                        raise
        finally:
            os.close(lineage_fd)


def search_principals(spec: KeySpec) -> list[dict[str, int]]:
    """Who needs ``x`` on the path to a key with this spec: a non-root reading owner, a
    reading group (as ``{"uid": N}`` / ``{"gid": N}``, the arguments of acl.grant_search)."""
    principals: list[dict[str, int]] = []
    if spec.mode & stat.S_IRUSR and spec.uid != 0:
        principals.append({"uid": spec.uid})
    if spec.mode & stat.S_IRGRP:
        principals.append({"gid": spec.gid})
    return principals


def _grant_path(root_fd: int, config_dir: str, relpaths: list[str], spec: KeySpec,
                report: ApplyReport) -> None:
    """Let the spec's owner and group search every directory from the config dir down."""
    principals = search_principals(spec)
    if not principals:
        return
    seen: set[tuple[int, int]] = set()
    steps: list[tuple[str, str]] = [(".", config_dir)]
    for rel in relpaths:
        parts = rel.split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            steps.append((sub, os.path.join(config_dir, sub)))
    archive_top = relpaths[-1].split("/")[0]
    tightened = False
    for rel, shown in steps:
        with _opened_dir(root_fd, rel, config_dir) as fd:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            for who in principals:
                if not _can_search(fd, st, who):
                    if not tightened and rel.split("/")[0] == archive_top and "gid" in who:
                        with _opened_dir(root_fd, archive_top, config_dir) as top_fd:
                            _tighten_world_readable_keys(top_fd, os.path.join(
                                config_dir, archive_top), report)
                        tightened = True
                    try:
                        acl.grant_search(fd, **who)
                    except OSError as exc:
                        if exc.errno == errno.EOPNOTSUPP:
                            raise KeysError(
                                f"{shown}: the filesystem has no POSIX ACL support, so "
                                f"{_who(who, spec)} cannot be let through without opening it "
                                "to everyone (mount it with ACLs, or publish a copy of the "
                                "key with certbot-atomic-deploy)") from None
                        raise
                    report.changed.append(f"{shown}: {_who(who, spec)} may now search "
                                          "(ACL entry, x only)")


@contextmanager
def _opened_dir(root_fd: int, rel: str, config_dir: str) -> Iterator[int]:
    """Directory ``rel`` below the config dir, no symlink followed on the way."""
    fd = open_dir(rel, at=root_fd, at_path=config_dir)
    try:
        yield fd
    finally:
        os.close(fd)


def _can_search(fd: int, st: os.stat_result, who: dict[str, int]) -> bool:
    current = acl.read_acl(fd)
    if "uid" in who:
        return bool(acl.user_perms(st, current, who["uid"]) & acl.SEARCH)
    return bool(acl.group_perms(st, current, who["gid"]) & acl.SEARCH)


def _who(who: dict[str, int], spec: KeySpec) -> str:
    return f"user {spec.owner_name}" if "uid" in who else f"group {spec.group_name}"


def _warn_if_ancestors_keep_out(config_dir: str, spec: KeySpec, report: ApplyReport) -> None:
    """A directory above the config dir that the key's readers cannot search keeps them
    out whatever the key says: say so (it is not ours to open)."""
    path = os.path.realpath(config_dir)
    ancestors = []
    while True:
        ancestors.append(path)
        if path == "/":
            break
        path = os.path.dirname(path)
    for directory in reversed(ancestors):
        try:
            fd = os.open(directory, READ_DIR)
        except OSError:
            continue  # not ours to judge: the walk below it already succeeded
        try:
            st = os.fstat(fd)
            for who in search_principals(spec):
                if not _can_search(fd, st, who):
                    arg = (f"u:{spec.owner_name}:x" if "uid" in who
                           else f"g:{spec.group_name}:x")
                    report.warnings.append(
                        f"{directory} (mode {stat.S_IMODE(st.st_mode):04o}) keeps "
                        f"{_who(who, spec)} out, so it cannot reach the key whatever the "
                        f"key's mode (let it pass: setfacl -m {arg} {directory})")
                    return
        finally:
            os.close(fd)


def open_config_dir(config_dir: str) -> int:
    """The certbot config dir, opened once; everything below is reached relative to it.

    The config dir itself may be a symlink (a moved /etc/letsencrypt); nothing below it may.
    """
    try:
        return os.open(config_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise UsageError(f"{config_dir}: cannot open the certbot config dir: "
                         f"{reason(exc)} (give --config-dir)") from None


@contextmanager
def _lineage_keys(config_dir: str, name: str) -> Iterator[tuple[int, str, str, int, list[str]]]:
    """The lineage opened once by descriptor: (config dir fd, live/ and archive/ paths
    relative to it, the archive directory's fd, its privkeyN.pem names in version
    order). An OSError on the way is one KeysError naming the lineage."""
    root_fd = open_config_dir(config_dir)
    try:
        live_rel = f"live/{name}"
        with _opened_dir(root_fd, live_rel, config_dir) as live_fd:
            archive_rel = archive_relpath(live_fd, os.path.join(config_dir, live_rel))
        with _opened_dir(root_fd, archive_rel, config_dir) as archive_fd:
            keys = sorted((e for e in os.listdir(archive_fd) if PRIVKEY_NAME.match(e)),
                          key=lambda e: int(e[7:-4]))
            if not keys:
                raise LineageError(f"{os.path.join(config_dir, archive_rel)}: no "
                                   "privkeyN.pem files; is this a certbot lineage?")
            yield root_fd, live_rel, archive_rel, archive_fd, keys
    except OSError as exc:
        raise KeysError(f"{config_dir}: lineage {name}: "
                        f"{describe_os_error(exc, exc.filename or 'a key or directory')}"
                        ) from None
    finally:
        os.close(root_fd)


def apply_key_permissions(config_dir: str, name: str, spec: KeySpec) -> ApplyReport:
    """Give every key of lineage ``name`` the spec and let its readers reach it.

    Idempotent: a lineage already in shape is opened and stat'ed, nothing else.
    Raises :class:`LineageError` for a missing or untrustworthy lineage,
    :class:`ChownRefused` when not privileged enough (keys are left narrowed,
    never widened), :class:`KeysError` for anything else it cannot do.
    """
    report = ApplyReport(lineage=name, spec=spec)
    with _lineage_keys(config_dir, name) as (root_fd, live_rel, archive_rel, archive_fd, keys):
        for key in keys:
            apply_to_key(archive_fd, key, spec, os.path.join(config_dir, archive_rel, key),
                         report)
        _grant_path(root_fd, config_dir, [live_rel, archive_rel], spec, report)
        _warn_if_ancestors_keep_out(config_dir, spec, report)
    return report


def hold_previous_key(config_dir: str, name: str) -> ApplyReport:
    """Give the lineage's newest key the owner, group and mode of the key before it
    (at most 0640): for a renewal whose spec cannot be applied (a deleted group,
    a bad value), so the new key is never wider and never someone else's than
    the old one. An owner or group id that no longer has a name is replaced by
    root's (and the group loses its bits): a later useradd would inherit it.
    Nothing else changes. Raises like
    :func:`apply_key_permissions`.
    """
    with _lineage_keys(config_dir, name) as (_root, _live, archive_rel, archive_fd, keys):
        if len(keys) < 2:
            raise LineageError(f"{os.path.join(config_dir, archive_rel)}: no earlier key to "
                               "take the owner, group and mode of")
        st = os.stat(keys[-2], dir_fd=archive_fd, follow_symlinks=False)
        uid, gid = st.st_uid, st.st_gid
        mode = stat.S_IMODE(st.st_mode) & KEY_MODE_GROUP_READ
        # An id whose name is gone (userdel, groupdel) gets nothing: the next useradd
        # or groupadd would be given it, and with it the key.
        if not has_name(uid, user=True):
            uid = 0
        if not has_name(gid, user=False):
            gid, mode = 0, mode & ~stat.S_IRWXG
        held = KeySpec(uid=uid, gid=gid, mode=mode, owner_name=name_of_uid(uid),
                       group_name=name_of_gid(gid))
        report = ApplyReport(lineage=name, spec=held)
        apply_to_key(archive_fd, keys[-1], held, os.path.join(config_dir, archive_rel,
                                                               keys[-1]), report)
    return report

"""POSIX access ACLs on directory descriptors, read and written as the kernel's xattr.

Imports no certbot and needs no ``libacl``: the ``system.posix_acl_access``
xattr is a little-endian u32 version (2) followed by (u16 tag, u16 perm,
u32 id) entries sorted by tag, then id. Named entries need a MASK entry; the
kernel shows the mask as the group bits of ``st_mode``.

Used for: letting one user or group *search* (``x``) a directory that is
otherwise closed (Certbot's ``live/`` and ``archive/`` are 0700), without
letting it list the directory and without giving anyone else anything; and, for
the trust rule (:mod:`daemon_keys.trust`) and every file we publish, seeing who
an ACL lets in and taking an inherited one away (:func:`clear`).
"""
from __future__ import annotations

import errno
import os
import stat
import struct
from dataclasses import dataclass

ACL_XATTR = "system.posix_acl_access"
DEFAULT_XATTR = "system.posix_acl_default"  # a directory's: what new entries inherit
_VERSION = 2
_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")

USER_OBJ = 0x01
USER = 0x02
GROUP_OBJ = 0x04
GROUP = 0x08
MASK = 0x10
OTHER = 0x20
UNDEFINED_ID = 0xFFFFFFFF

READ, WRITE, SEARCH = 4, 2, 1
_GROUP_CLASS = (USER, GROUP_OBJ, GROUP)


@dataclass(frozen=True, order=True)
class AclEntry:
    tag: int
    qualifier: int
    perm: int


def decode(data: bytes) -> list[AclEntry]:
    (version,) = _HEADER.unpack_from(data)
    if version != _VERSION or (len(data) - _HEADER.size) % _ENTRY.size:
        raise ValueError(f"unknown POSIX ACL format (version {version}, {len(data)} bytes)")
    return [AclEntry(tag, qualifier, perm) for tag, perm, qualifier
            in _ENTRY.iter_unpack(data[_HEADER.size:])]


def encode(entries: list[AclEntry]) -> bytes:
    return _HEADER.pack(_VERSION) + b"".join(
        _ENTRY.pack(e.tag, e.perm, e.qualifier) for e in sorted(entries))


def read_acl(fd: int) -> list[AclEntry] | None:
    """The extended access ACL of ``fd``, or None when it has only mode bits."""
    try:
        return decode(os.getxattr(fd, ACL_XATTR))
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.EOPNOTSUPP):
            return None
        raise


def describe(entry: AclEntry, name: str = "") -> str:
    """An entry as getfacl prints it: ``user:alice:rw-``, ``group:1004:--x``, ``mask::r--``."""
    tag = {USER_OBJ: "user", USER: "user", GROUP_OBJ: "group", GROUP: "group", MASK: "mask",
           OTHER: "other"}.get(entry.tag, f"tag{entry.tag}")
    bits = "".join(c if entry.perm & b else "-" for c, b in (("r", READ), ("w", WRITE),
                                                               ("x", SEARCH)))
    who = name or (str(entry.qualifier) if entry.tag in (USER, GROUP) else "")
    return f"{tag}:{who}:{bits}"


def effective_named(entries: list[AclEntry]) -> list[tuple[AclEntry, int]]:
    """Each named user and group entry with what it really grants (its perm and the mask)."""
    mask = _perm(entries, MASK)
    limit = 7 if mask is None else mask
    return [(e, e.perm & limit) for e in entries if e.tag in (USER, GROUP)]


def owning_group_perm(st: os.stat_result, entries: list[AclEntry] | None) -> int:
    """What the owning group may do: its ACL entry cut by the mask (the mode's group
    bits are the mask when there is an ACL)."""
    if entries is None:
        return (st.st_mode >> 3) & 7
    mask = _perm(entries, MASK)
    return (_perm(entries, GROUP_OBJ) or 0) & (7 if mask is None else mask)


def clear(fd: int, *, directory: bool = False) -> bool:
    """Take away ``fd``'s extended access ACL (and, for a directory, its default ACL),
    keeping the mode bits as they are; True if there was one.

    A file created in a directory with a default ACL inherits it: named entries
    that, once the mode is widened, let in whoever the directory's owner listed.
    Call it right after creating the file 0600 (or a directory 0700), when the
    inherited mask still lets those entries do nothing, and before the final
    ``fchmod``: the mode then says exactly who may read. Removing the access ACL
    xattr makes the kernel treat the group bits of the mode (the mask until now)
    as the owning group's.
    """
    changed = False
    for name in (ACL_XATTR, DEFAULT_XATTR) if directory else (ACL_XATTR,):
        try:
            os.removexattr(fd, name)
            changed = True
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.EOPNOTSUPP):
                raise
    return changed


def _minimal_from_mode(mode: int) -> list[AclEntry]:
    return [AclEntry(USER_OBJ, UNDEFINED_ID, (mode >> 6) & 7),
            AclEntry(GROUP_OBJ, UNDEFINED_ID, (mode >> 3) & 7),
            AclEntry(OTHER, UNDEFINED_ID, mode & 7)]


def _perm(entries: list[AclEntry], tag: int, qualifier: int = UNDEFINED_ID) -> int | None:
    for e in entries:
        if e.tag == tag and e.qualifier == qualifier:
            return e.perm
    return None


def named_entries(fd: int) -> list[AclEntry]:
    """Named user and group entries of ``fd``'s access ACL (empty without one)."""
    return [e for e in (read_acl(fd) or []) if e.tag in (USER, GROUP)]


def group_perms(st: os.stat_result, acl: list[AclEntry] | None, gid: int) -> int:
    """What a process whose only matching credential is group ``gid`` may do.

    Follows the kernel's order: owning group or a named group entry (each
    limited by the mask), else the others' class.
    """
    if acl is None:
        if st.st_gid == gid:
            return (st.st_mode >> 3) & 7
        return st.st_mode & 7
    mask = _perm(acl, MASK)
    limit = 7 if mask is None else mask
    matched = []
    if st.st_gid == gid:
        matched.append((_perm(acl, GROUP_OBJ) or 0) & limit)
    named = _perm(acl, GROUP, gid)
    if named is not None:
        matched.append(named & limit)
    if matched:
        return max(matched, key=lambda p: p & SEARCH)
    return _perm(acl, OTHER) or 0


def user_perms(st: os.stat_result, acl: list[AclEntry] | None, uid: int) -> int:
    """What user ``uid`` (not counting its groups) may do."""
    if st.st_uid == uid:
        return (st.st_mode >> 6) & 7
    if acl is not None:
        named = _perm(acl, USER, uid)
        if named is not None:
            mask = _perm(acl, MASK)
            return named & (7 if mask is None else mask)
        return _perm(acl, OTHER) or 0
    return st.st_mode & 7


def grant_search(fd: int, *, uid: int | None = None, gid: int | None = None) -> bool:
    """Let user ``uid`` or group ``gid`` search the directory ``fd``; True if changed.

    Adds (or widens) one named entry by ``x`` only. The mask grows by ``x`` and
    nothing else: every other group-class entry is first cut to what the old
    mask let it have, so no one else's effective access changes.
    Raises OSError (EOPNOTSUPP) on a filesystem without ACL support.
    """
    if uid is not None and gid is not None:
        raise ValueError("grant_search takes exactly one of uid or gid")
    st = os.fstat(fd)
    acl = read_acl(fd)
    if uid is not None:
        if user_perms(st, acl, uid) & SEARCH:
            return False
        tag, qualifier = USER, uid
    elif gid is not None:
        if group_perms(st, acl, gid) & SEARCH:
            return False
        tag, qualifier = GROUP, gid
    else:
        raise ValueError("grant_search takes exactly one of uid or gid")
    if acl is None:
        acl = _minimal_from_mode(stat.S_IMODE(st.st_mode))
    old_mask = _perm(acl, MASK)
    if old_mask is None:  # no mask yet: the group class is exactly the owning group
        old_mask = _perm(acl, GROUP_OBJ) or 0
    entries = []
    for e in acl:
        if e.tag == MASK or (e.tag == tag and e.qualifier == qualifier):
            continue
        perm = e.perm & old_mask if e.tag in _GROUP_CLASS else e.perm
        entries.append(AclEntry(e.tag, e.qualifier, perm))
    current = _perm(acl, tag, qualifier) or 0
    entries.append(AclEntry(tag, qualifier, (current & old_mask) | SEARCH))
    entries.append(AclEntry(MASK, UNDEFINED_ID, old_mask | SEARCH))
    os.setxattr(fd, ACL_XATTR, encode(entries))
    return True


def revoke(fd: int, tag: int, qualifier: int) -> bool:
    """Remove the named entry (``USER`` or ``GROUP``, ``qualifier``) from ``fd``; True if gone.

    Nobody gains anything: the mask is kept, and when no named entry is left the
    ACL is replaced by its mode-bit equivalent with the owning group cut to what
    the mask let it have (the kernel then drops the xattr itself).
    """
    current = read_acl(fd)
    if current is None or _perm(current, tag, qualifier) is None:
        return False
    rest = [e for e in current if not (e.tag == tag and e.qualifier == qualifier)]
    if any(e.tag in (USER, GROUP) for e in rest):
        os.setxattr(fd, ACL_XATTR, encode(rest))
        return True
    mask = _perm(current, MASK)
    owning = (_perm(current, GROUP_OBJ) or 0) & (7 if mask is None else mask)
    os.setxattr(fd, ACL_XATTR, encode([
        AclEntry(USER_OBJ, UNDEFINED_ID, _perm(current, USER_OBJ) or 0),
        AclEntry(GROUP_OBJ, UNDEFINED_ID, owning),
        AclEntry(OTHER, UNDEFINED_ID, _perm(current, OTHER) or 0)]))
    return True

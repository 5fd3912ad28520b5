"""The owner, group and mode of a private key: the rules and defaults, once.

Imports only the standard library. Used by the certbot installer, by
``certbot-perms`` and by every deploy target, so a key spec means the same
everywhere. A :class:`KeySpec` is only ever built by :func:`parse_spec`, which
validates everything before anything on disk is touched.

Rules (a key is a secret, the mode may only ever narrow what the daemon needs):
- owner and group are names or numeric ids; a name must exist on this system,
  a number is taken as it is (containers often have ids without names);
- the mode is octal (``0640``, ``640`` or ``0o640``); it may give others no
  access at all, the group at most read, and no setuid, setgid or sticky bit;
- defaults: owner and group those of the running process (root when run as
  root; what Certbot itself writes its keys as); mode 0640 when a group is
  given, else 0600.
"""
from __future__ import annotations

import functools
import grp
import os
import pwd
import re
import stat
from typing import NamedTuple

from daemon_keys.errors import SpecError

KEY_MODE_OWNER_ONLY = 0o600
KEY_MODE_GROUP_READ = 0o640
# Bits a key mode may never have: any access for others, group write/execute,
# setuid/setgid/sticky.
FORBIDDEN_KEY_BITS = (stat.S_IRWXO | stat.S_IWGRP | stat.S_IXGRP
                      | stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX)

_OCTAL_MODE = re.compile(r"^(?:0o|0)?([0-7]{3,4})\Z")


class KeySpec(NamedTuple):
    """Final owner, group and mode of every private key of a lineage."""

    uid: int
    gid: int
    mode: int
    owner_name: str
    group_name: str

    def describe(self) -> str:
        return f"{self.owner_name}:{self.group_name} {self.mode:04o}"

    def allows_group(self) -> bool:
        return bool(self.mode & stat.S_IRGRP)

    def as_options(self) -> dict[str, str]:
        """The spec as option values, as a user would write them."""
        return {"key-owner": self.owner_name, "key-group": self.group_name,
                "key-mode": f"{self.mode:04o}"}


@functools.cache  # a config of 10,000 targets names a few users
def name_of_uid(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


@functools.cache
def name_of_gid(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def has_name(number: int, *, user: bool) -> bool:
    """Whether uid (``user``) or gid ``number`` has a name now (not cached: asked
    about ids whose user or group may just have been deleted)."""
    try:
        (pwd.getpwuid if user else grp.getgrgid)(number)
    except KeyError:
        return False
    return True


@functools.cache  # a miss raises KeyError, which is not cached
def _uid_of(name: str) -> int:
    return pwd.getpwnam(name).pw_uid


@functools.cache
def _gid_of(name: str) -> int:
    return grp.getgrnam(name).gr_gid


# (uid_t)-1 means "leave unchanged" to chown(2): no file can be given it.
MAX_ID = 4294967294


def _numeric_id(value: str, option: str, what: str) -> int:
    number = int(value)
    if number > MAX_ID:
        raise SpecError(f"{option}: {what} {value} is out of range (0 to {MAX_ID})")
    return number


def resolve_user(value: str, option: str) -> tuple[int, str]:
    """A user name or numeric uid -> (uid, display name). As chown(1): a name first,
    so a user called '4242' is that user, not uid 4242."""
    value = value.strip()
    try:
        return _uid_of(value), value
    except (KeyError, ValueError):  # ValueError: a NUL in the name
        if value.isascii() and value.isdigit():
            uid = _numeric_id(value, option, "uid")
            return uid, name_of_uid(uid)
        raise SpecError(f"{option}: user '{value}' does not exist "
                        "(create it, or give a numeric uid)") from None


def resolve_group(value: str, option: str) -> tuple[int, str]:
    """A group name or numeric gid -> (gid, display name); a name first, as chown(1)."""
    value = value.strip()
    try:
        return _gid_of(value), value
    except (KeyError, ValueError):
        if value.isascii() and value.isdigit():
            gid = _numeric_id(value, option, "gid")
            return gid, name_of_gid(gid)
        raise SpecError(f"{option}: group '{value}' does not exist (create it, e.g. "
                        "'groupadd --system NAME', or give a numeric gid)") from None


def parse_mode(value: str, option: str) -> int:
    """An octal key mode, refused if it opens the key beyond owner and group read."""
    match = _OCTAL_MODE.match(value.strip())
    if match is None:
        raise SpecError(f"{option}: '{value}' is not an octal mode (write it like 0640 or 0600)")
    mode = int(match.group(1), 8)
    if mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX):
        raise SpecError(f"{option}: {mode:04o} sets setuid, setgid or sticky bits, "
                        "which a key never needs (use 0640 or 0600)")
    if mode & stat.S_IRWXO:
        raise SpecError(f"{option}: {mode:04o} gives other users access to the private key "
                        "(use 0640 and a group the daemon is in, or 0600)")
    if mode & stat.S_IXUSR:
        raise SpecError(f"{option}: {mode:04o} makes the private key executable, which it "
                        "never needs (use 0600, or 0640 with a group)")
    if mode & (stat.S_IWGRP | stat.S_IXGRP):
        raise SpecError(f"{option}: {mode:04o} lets the group write or execute the private key "
                        "(the group needs read at most: use 0640)")
    return mode


def parse_spec(owner: str | None, group: str | None, mode: str | None,
               option_prefix: str = "--", names: tuple[str, str, str] | None = None,
               all_defaults: bool = False) -> KeySpec:
    """Validate the three values and return the spec they mean, defaults filled in.

    Errors name each value as the user wrote it: ``names`` (owner, group,
    mode), else ``<option_prefix>key-owner`` and so on (``--perms-`` for the
    certbot plugin, ``--`` for certbot-perms). Three empty values are refused
    (nothing to apply) unless ``all_defaults``. Raises :class:`SpecError`.
    """
    where = names or tuple(f"{option_prefix}key-{w}" for w in ("owner", "group", "mode"))
    if not all_defaults and not any(v and v.strip() for v in (owner, group, mode)):
        raise SpecError(f"nothing to apply: give {where[1]}, {where[0]} or {where[2]}")
    if owner is not None and owner.strip():
        uid, owner_name = resolve_user(owner, where[0])
    else:
        uid = os.geteuid()
        owner_name = name_of_uid(uid)
    if group is not None and group.strip():
        gid, group_name = resolve_group(group, where[1])
        default_mode = KEY_MODE_GROUP_READ
    else:
        gid = os.getegid()
        group_name = name_of_gid(gid)
        default_mode = KEY_MODE_OWNER_ONLY
    key_mode = parse_mode(mode, where[2]) if mode and mode.strip() else default_mode
    return KeySpec(uid=uid, gid=gid, mode=key_mode, owner_name=owner_name, group_name=group_name)


def exceeds(spec: KeySpec, uid: int, gid: int, mode: int) -> str | None:
    """Why a key with this owner, group and mode is readable beyond ``spec``, or None.

    Root reads everything anyway, so only the bits that open the key to someone
    else count: others' bits, group bits for a group other than the spec's,
    owner bits for an owner other than the spec's or root.
    """
    mode = stat.S_IMODE(mode)
    if mode & stat.S_IRWXO:
        return f"mode {mode:04o} gives other users access"
    if mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX):
        return f"mode {mode:04o} has setuid, setgid or sticky bits"
    if mode & stat.S_IRWXG:
        if gid != spec.gid:
            return f"group {name_of_gid(gid)} has access, the spec allows {spec.group_name}"
        if mode & stat.S_IRWXG & ~spec.mode:
            return f"mode {mode:04o} gives the group more than {spec.mode:04o}"
    if mode & stat.S_IRWXU:
        if uid != spec.uid and uid != 0:
            return f"owner {name_of_uid(uid)} has access, the spec says {spec.owner_name}"
        if mode & stat.S_IRWXU & ~spec.mode:
            return f"mode {mode:04o} gives the owner more than {spec.mode:04o}"
    return None

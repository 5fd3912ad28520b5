"""The trust rule: who may change (or read) a file or directory the suite believes.

Imports only the standard library and the core's :mod:`.acl`. One rule for
every input of both commands (the deploy config and each directory above it,
``receive.conf``, password files, TSIG keys, the ssh identity and
``known_hosts``, the spool, the state directory and its lock) and every
directory we write into:

- **owner**: root, or a uid the caller trusts (the user running the deploy;
  for a destination directory, the target's owner);
- **writers**: nobody else may write, counting the mode bits *and* the POSIX
  access ACL: the owning group may write only if it is group root (gid 0, as
  sudo accepts for sudoers); a named ``user:`` entry whose effective
  permission (the entry cut by the mask) has ``w`` only for root or a trusted
  uid; a named ``group:`` entry with ``w`` only for group root; others never.
  A directory *above* the one we use may be sticky and world-writable (like
  ``/tmp``): others cannot replace entries they do not own there;
- **readers** (secrets: password files, TSIG keys, the identity): nobody but
  the owner (and, where the rule allows it, the owning group) may read:
  no bits for others and no named ACL entry that reads.

Each refusal names the entry as ``getfacl`` prints it (``user:alice:rw-``) so
the line can say what to run (``setfacl -b FILE`` removes every ACL entry).
Names come from the passwd and group databases; a number is shown when an id
has no name (a deleted user still holds what it held).
"""
from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable

from daemon_keys import acl
from daemon_keys.errors import KeysError
from daemon_keys.keyspec import name_of_gid, name_of_uid

ACL_FIX = "setfacl -b {path}"


def entry_text(entry: acl.AclEntry, perm: int | None = None) -> str:
    """``user:alice:rw-`` (with the effective ``perm`` when given)."""
    shown = entry if perm is None else acl.AclEntry(entry.tag, entry.qualifier, perm)
    name = (name_of_uid(entry.qualifier) if entry.tag == acl.USER
            else name_of_gid(entry.qualifier) if entry.tag == acl.GROUP else "")
    return acl.describe(shown, name)


def unsafe_reason(st: os.stat_result, trusted_uids: Iterable[int], *, last: bool,
                  entries: list[acl.AclEntry] | None = None) -> str | None:
    """Why a file or directory with this stat (and access ACL ``entries``) is unsafe to
    believe or to write under, or None. See the module rule; ``last`` is False for a
    directory above the one used, which may be sticky and world-writable."""
    trusted = set(trusted_uids) | {0}
    if st.st_uid not in trusted:
        return f"owned by uid {st.st_uid}, not root"
    mode = st.st_mode
    if mode & stat.S_ISVTX and not last and stat.S_ISDIR(mode):
        return None
    if mode & stat.S_IWOTH:
        return f"writable by others (mode {stat.S_IMODE(mode):04o})"
    if acl.owning_group_perm(st, entries) & acl.WRITE and st.st_gid != 0:
        return f"writable by group {st.st_gid} (mode {stat.S_IMODE(mode):04o})"
    for entry, perm in acl.effective_named(entries or []):
        if not perm & acl.WRITE:
            continue
        if entry.tag == acl.USER and entry.qualifier in trusted:
            continue
        if entry.tag == acl.GROUP and entry.qualifier == 0:
            continue
        return (f"the ACL entry {entry_text(entry, perm)} lets "
                f"{'uid' if entry.tag == acl.USER else 'group'} {entry.qualifier} write it")
    return None


def exposed_reason(st: os.stat_result, entries: list[acl.AclEntry] | None, *,
                   group_may_read: bool) -> str | None:
    """Why a secret with this stat (and access ACL) is readable beyond its owner (and,
    with ``group_may_read``, its owning group), or None."""
    mode = stat.S_IMODE(st.st_mode)
    if mode & stat.S_IRWXO:
        return f"mode {mode:04o} lets others read it"
    group = acl.owning_group_perm(st, entries)
    if group & acl.WRITE or (group & acl.READ and not group_may_read):
        return f"mode {mode:04o} lets the group {'write' if group & acl.WRITE else 'read'} it"
    for entry, perm in acl.effective_named(entries or []):
        if perm & (acl.READ | acl.WRITE):
            return (f"the ACL entry {entry_text(entry, perm)} lets "
                    f"{'uid' if entry.tag == acl.USER else 'group'} {entry.qualifier} "
                    "read it")
    return None


def fix_hint(reason_text: str, path: str, default: str) -> str:
    """What to run: ``setfacl -b PATH`` when an ACL entry is the reason, else ``default``."""
    return ACL_FIX.format(path=path) if "ACL entry" in reason_text else default


def file_check(where: str, error: type[KeysError], *, stakes: str,
               trusted_uids: Iterable[int] = (), readers: str | None = None
               ) -> Callable[[int, os.stat_result], None]:
    """A ``check`` for :func:`.fs.read_regular`: the open file must pass the rule.

    ``stakes`` says why it matters ("its check commands run as uid 0"); ``readers``
    makes it a secret: ``"owner"`` (nobody else reads it) or ``"group"`` (its
    owning group may read it too). Raises ``error`` with one line naming the
    file, the entry and the fix.
    """
    trusted = {os.geteuid(), *trusted_uids}

    def check(fd: int, st: os.stat_result) -> None:
        entries = acl.read_acl(fd)
        why = unsafe_reason(st, trusted, last=True, entries=entries)
        if why is not None:
            fix = fix_hint(why, where, "chown root: FILE; chmod go-w FILE")
            raise error(f"{where}: refused, {why}; {stakes}: make it root-owned and "
                        f"writable by root only ({fix})")
        if readers is not None:
            why = exposed_reason(st, entries, group_may_read=readers == "group")
            if why is not None:
                fix = fix_hint(why, where, "chmod 600 FILE")
                raise error(f"{where}: refused, {why}; {stakes} ({fix})")

    return check

"""Audit a Certbot config dir for private keys readable too widely. Imports no certbot.

Finds:
- lineage keys (``archive/*/privkeyN.pem``) readable beyond their lineage's
  spec (see :mod:`.records`), or beyond 0600 and root's where none is set;
- keys with an extended ACL (a named user or group the mode does not show);
- account keys (``accounts/**/private_key.json``) readable by anyone but their owner;
- directories writable by others, and ``live/``, ``archive/``, ``accounts/``
  open to others (Certbot makes them 0700);
- ACL entries on ``live/``, ``archive/`` and their lineage directories that no
  lineage's spec asks for (left by a group that was changed since, or added by
  hand), or that give more than search (``x``), and entries for ids whose user
  or group was deleted (a later ``useradd`` would be given the id and its access).

``fix=True`` tightens: a key of a lineage with a spec gets that spec (as
``certbot-perms apply`` would); any other key and every account key loses
group and others' bits; a directory loses others' bits and group write, and
ACL entries no spec asks for (an entry a spec asks for keeps ``x`` only).
Nothing is ever widened. Everything is opened relative to a directory
descriptor with ``O_NOFOLLOW``; symlinks are reported, never followed.
"""
from __future__ import annotations

import errno
import os
import stat
from dataclasses import asdict, dataclass

from certbot_perms.lineage import (
    PRIVKEY_NAME,
    ApplyReport,
    apply_to_key,
    open_config_dir,
    search_principals,
)
from certbot_perms.records import spec_for
from daemon_keys import acl
from daemon_keys.errors import ConfigError, KeysError, describe_os_error
from daemon_keys.fs import READ_DIR, READ_FILE
from daemon_keys.keyspec import (
    KEY_MODE_OWNER_ONLY,
    KeySpec,
    exceeds,
    has_name,
    name_of_gid,
    name_of_uid,
)

PRIVATE_DIRS = ("live", "archive", "accounts")
DEFAULT_SPEC = KeySpec(uid=0, gid=0, mode=KEY_MODE_OWNER_ONLY, owner_name="root",
                        group_name="root")


@dataclass
class Finding:
    path: str
    problem: str
    fixed: bool = False

    def line(self) -> str:
        return f"{self.path}: {self.problem}{' [fixed]' if self.fixed else ''}"


def _open_file(name: str, dir_fd: int) -> int | None:
    try:
        return os.open(name, READ_FILE, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None
        raise


def _audit_dir(fd: int, path: str, private: bool, fix: bool, out: list[Finding]) -> None:
    st = os.fstat(fd)
    mode = stat.S_IMODE(st.st_mode)
    bad = stat.S_IWOTH | (stat.S_IWGRP if st.st_gid != 0 else 0)
    if private:
        bad |= stat.S_IRWXO
    if mode & bad:
        what = "others" if mode & stat.S_IRWXO & bad else f"group {st.st_gid}"
        finding = Finding(path, f"directory mode {mode:04o} opens it to {what} "
                                f"(expected {'0700' if private else 'no group/other write'})")
        if fix:
            os.fchmod(fd, mode & ~bad)
            finding.fixed = True
        out.append(finding)


def _audit_key(dir_fd: int, name: str, path: str, spec: KeySpec, has_spec: bool,
               fix: bool, out: list[Finding]) -> None:
    fd = _open_file(name, dir_fd)
    if fd is None:
        return  # a symlink: Certbot's own for a reused key; its target is audited itself
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            out.append(Finding(path, "not a regular file where a key should be"))
            return
        named = acl.named_entries(fd)
        why = exceeds(spec, st.st_uid, st.st_gid, st.st_mode)
        if named:
            why = (why + "; " if why else "") + "an ACL grants access to " + ", ".join(
                f"{'user' if e.tag == acl.USER else 'group'} {e.qualifier}" for e in named)
    finally:
        os.close(fd)
    if why is None:
        return
    where = "its lineage's spec " + spec.describe() if has_spec else "0600 root (no spec set)"
    finding = Finding(path, f"readable beyond {where}: {why}")
    if fix:
        if has_spec:
            apply_to_key(dir_fd, name, spec, path, ApplyReport(lineage="", spec=spec))
        else:
            _tighten_to_owner(dir_fd, name)
        finding.fixed = True
    out.append(finding)


def _tighten_to_owner(dir_fd: int, name: str) -> None:
    fd = _open_file(name, dir_fd)
    if fd is None:
        return
    try:
        acl.clear(fd)
        st = os.fstat(fd)
        os.fchmod(fd, stat.S_IMODE(st.st_mode) & (stat.S_IRUSR | stat.S_IWUSR))
    finally:
        os.close(fd)


class _Specs:
    """Each lineage's spec, read once per audit (the key and the ACL checks both need it).

    A spec that cannot be read (a bad value, a deleted group) is a finding of its
    own; that lineage's keys and ACL entries are then left unjudged, and unfixed:
    judging them by 0600 root would have --fix strip the daemon's access.
    """

    def __init__(self, config_dir: str, out: list[Finding]) -> None:
        self.config_dir = config_dir
        self.out = out
        self._specs: dict[str, KeySpec | None] = {}
        self.broken: set[str] = set()

    def __call__(self, name: str) -> KeySpec | None:
        if name not in self._specs:
            try:
                self._specs[name] = spec_for(self.config_dir, name)[0]
            except ConfigError as exc:
                self._specs[name] = None
                self.broken.add(name)
                self.out.append(Finding(
                    os.path.join(self.config_dir, "live", name),
                    f"fails its recorded key spec: {exc}; its keys and the ACL entries on "
                    "live/ and archive/ are not judged (nor fixed) until that is fixed"))
        return self._specs[name]

    def needs(self, name: str) -> set[tuple[int, int]] | None:
        """The ACL entries (tag, id) the path to this lineage's key may carry, x only;
        None when its spec cannot be read (nothing there is judged)."""
        spec = self(name)
        if name in self.broken:
            return None
        return {(acl.USER, w["uid"]) if "uid" in w else (acl.GROUP, w["gid"])
                for w in (search_principals(spec) if spec else [])}

    def anyone_needs(self) -> set[tuple[int, int]] | None:
        """What any lineage seen so far needs: the entries live/ and archive/ may carry."""
        needs = [self.needs(name) for name in self._specs]
        if any(n is None for n in needs):
            return None
        return set().union(*(n for n in needs if n is not None))


def _audit_archive(root_fd: int, config_dir: str, specs: _Specs, fix: bool,
                   out: list[Finding]) -> None:
    try:
        archive_fd = os.open("archive", READ_DIR, dir_fd=root_fd)
    except FileNotFoundError:
        return
    try:
        with os.scandir(archive_fd) as entries:
            lineages = sorted(e.name for e in entries)
        for lineage in lineages:
            shown = os.path.join(config_dir, "archive", lineage)
            try:
                lineage_fd = os.open(lineage, READ_DIR, dir_fd=archive_fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    out.append(Finding(shown, "not a directory (a symlink?) in archive/; "
                                              "not followed"))
                    continue
                raise
            try:
                _audit_dir(lineage_fd, shown, False, fix, out)
                _audit_acl_entries(lineage_fd, shown, specs.needs(lineage), fix, out)
                spec = specs(lineage)
                if lineage in specs.broken:
                    continue
                for key in sorted(n for n in os.listdir(lineage_fd) if PRIVKEY_NAME.match(n)):
                    _audit_key(lineage_fd, key, os.path.join(shown, key),
                               spec or DEFAULT_SPEC, spec is not None, fix, out)
            finally:
                os.close(lineage_fd)
    finally:
        os.close(archive_fd)


def _audit_accounts(root_fd: int, config_dir: str, fix: bool, out: list[Finding]) -> None:
    try:
        accounts_fd = os.open("accounts", READ_DIR, dir_fd=root_fd)
    except FileNotFoundError:
        return
    try:
        for dirpath, dirnames, filenames, dfd in os.fwalk(dir_fd=accounts_fd):
            shown_dir = os.path.normpath(os.path.join(config_dir, "accounts", dirpath))
            for sub in dirnames:
                with_fd = os.open(sub, READ_DIR, dir_fd=dfd)
                try:
                    _audit_dir(with_fd, os.path.join(shown_dir, sub), True, fix, out)
                finally:
                    os.close(with_fd)
            if "private_key.json" not in filenames:
                continue
            path = os.path.join(shown_dir, "private_key.json")
            fd = _open_file("private_key.json", dfd)
            if fd is None:
                out.append(Finding(path, "is a symlink; an account key should be a file"))
                continue
            try:
                st = os.fstat(fd)
                mode = stat.S_IMODE(st.st_mode)
                if mode & (stat.S_IRWXG | stat.S_IRWXO) or acl.named_entries(fd):
                    finding = Finding(path, f"account key mode {mode:04o} is readable beyond "
                                            "its owner (expected 0400 or 0600)")
                    if fix:
                        acl.clear(fd)
                        os.fchmod(fd, mode & (stat.S_IRUSR | stat.S_IWUSR))
                        finding.fixed = True
                    out.append(finding)
            finally:
                os.close(fd)
    finally:
        os.close(accounts_fd)


def _subdirs(fd: int) -> list[str]:
    with os.scandir(fd) as entries:
        return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))


def _audit_acl_entries(fd: int, path: str, allowed: set[tuple[int, int]] | None, fix: bool,
                       out: list[Finding]) -> None:
    """Named entries no readable spec asks for, or that give more than ``x``; an entry for
    an id with no name (its user or group deleted) is judged even when a spec cannot be
    read (``allowed`` None): the next useradd or groupadd would be given that id."""
    for entry in acl.named_entries(fd):
        user = entry.tag == acl.USER
        orphan = not has_name(entry.qualifier, user=user)
        if allowed is None and not orphan:
            continue  # a spec it depends on cannot be read: reported once, by _Specs
        who = (f"user {name_of_uid(entry.qualifier)}" if user
               else f"group {name_of_gid(entry.qualifier)}")
        wanted = allowed is not None and (entry.tag, entry.qualifier) in allowed
        if wanted and not entry.perm & ~acl.SEARCH:
            continue
        perms = "".join(c for bit, c in ((acl.READ, "r"), (acl.WRITE, "w"), (acl.SEARCH, "x"))
                        if entry.perm & bit) or "nothing"
        if orphan and not wanted:
            problem = (f"an ACL entry gives {'uid' if user else 'gid'} {entry.qualifier}, "
                       f"which has no name (a deleted {'user' if user else 'group'}), "
                       f"{perms}: the next {'useradd' if user else 'groupadd'} given that "
                       "id would inherit it")
        else:
            problem = f"an ACL entry gives {who} {perms}, " + (
                "more than the search (x) its lineage's spec needs" if wanted
                else "which no lineage's spec asks for")
        finding = Finding(path, problem)
        if fix:
            acl.revoke(fd, entry.tag, entry.qualifier)
            if wanted:
                acl.grant_search(fd, **({"uid": entry.qualifier} if user
                                        else {"gid": entry.qualifier}))
            finding.fixed = True
        out.append(finding)


def _audit_live_acls(root_fd: int, config_dir: str, specs: _Specs, fix: bool,
                     out: list[Finding]) -> None:
    """ACL entries on live/, its lineage directories and archive/ (after _audit_archive
    has seen every lineage there): only what some lineage's spec needs, x only."""
    tops: dict[str, int] = {}
    try:
        for top in ("live", "archive"):
            try:
                tops[top] = os.open(top, READ_DIR, dir_fd=root_fd)
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                    raise  # a symlink or file there is reported by audit()
        if "live" in tops:
            shown_live = os.path.join(config_dir, "live")
            for name in _subdirs(tops["live"]):
                sub = os.open(name, READ_DIR, dir_fd=tops["live"])
                try:
                    if acl.named_entries(sub):
                        _audit_acl_entries(sub, os.path.join(shown_live, name),
                                           specs.needs(name), fix, out)
                    else:
                        specs(name)  # still counts for what live/ itself may carry
                finally:
                    os.close(sub)
        anyone = specs.anyone_needs()
        for top, fd in tops.items():
            _audit_acl_entries(fd, os.path.join(config_dir, top), anyone, fix, out)
    finally:
        for fd in tops.values():
            os.close(fd)


def audit(config_dir: str, fix: bool = False) -> list[Finding]:
    """Every finding in ``config_dir`` (fixed in place when ``fix``)."""
    root_fd = open_config_dir(config_dir)
    out: list[Finding] = []
    try:
        _audit_dir(root_fd, config_dir, False, fix, out)
        for sub in PRIVATE_DIRS:
            try:
                fd = os.open(sub, READ_DIR, dir_fd=root_fd)
            except FileNotFoundError:
                continue
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    out.append(Finding(os.path.join(config_dir, sub),
                                       "is a symlink or not a directory; not followed"))
                    continue
                raise
            try:
                _audit_dir(fd, os.path.join(config_dir, sub), True, fix, out)
            finally:
                os.close(fd)
        specs = _Specs(config_dir, out)
        _audit_archive(root_fd, config_dir, specs, fix, out)
        _audit_live_acls(root_fd, config_dir, specs, fix, out)
        _audit_accounts(root_fd, config_dir, fix, out)
    except OSError as exc:
        raise KeysError(f"{config_dir}: audit failed: "
                        f"{describe_os_error(exc, exc.filename or 'a file below it')}"
                        ) from None
    finally:
        os.close(root_fd)
    return out


def as_json(findings: list[Finding]) -> list[dict[str, object]]:
    return [asdict(f) for f in findings]

"""The permission rules on their own: spec parsing, exposure judgement, ACL grants.

Real users and groups, real directories, real readers (setpriv); no mocks.
"""
from __future__ import annotations

import grp
import os
import stat
from pathlib import Path

import pytest

from daemon_keys import acl
from daemon_keys.errors import SpecError
from daemon_keys.keyspec import exceeds, parse_spec
from tests.support.users import NOBODY, run_as


@pytest.mark.parametrize("mode,expected", [
    ("0640", 0o640), ("640", 0o640), ("0o640", 0o640), ("0600", 0o600), ("0440", 0o440),
    ("0400", 0o400), ("0000", 0o000),
])
def test_modes_that_are_accepted(mode: str, expected: int) -> None:
    assert parse_spec(None, None, mode).mode == expected


@pytest.mark.parametrize("mode,reason", [
    ("0644", "gives other users access"), ("0604", "gives other users access"),
    ("0641", "gives other users access"), ("0666", "gives other users access"),
    ("0660", "lets the group write"), ("0650", "lets the group write or execute"),
    ("4640", "setuid, setgid or sticky"), ("2640", "setuid, setgid or sticky"),
    ("1640", "setuid, setgid or sticky"),
    ("rw-r", "is not an octal mode"), ("0999", "is not an octal mode"), ("", "nothing"),
    ("06400", "setuid, setgid or sticky"), ("-640", "is not an octal mode"),
    ("0700", "makes the private key executable"), ("0740", "makes the private key executable"),
])
def test_modes_that_are_refused_name_the_option(mode: str, reason: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(None, None, mode) if mode else parse_spec(None, None, None)
    assert reason in str(err.value)
    if mode:
        assert str(err.value).startswith("--key-mode: ")


def test_defaults_follow_whether_a_group_is_given(group: str) -> None:
    with_group = parse_spec(None, group, None)
    assert (with_group.gid, with_group.mode) == (grp.getgrnam(group).gr_gid, 0o640)
    owner_only = parse_spec("0", None, None)
    assert (owner_only.uid, owner_only.gid, owner_only.mode) == (0, os.getegid(), 0o600)
    numeric = parse_spec("4242", "4343", "0440")
    assert (numeric.uid, numeric.gid, numeric.mode) == (4242, 4343, 0o440)


@pytest.mark.parametrize("uid,gid,mode,why", [
    (0, 100, 0o640, None),
    (0, 100, 0o600, None),
    (0, 0, 0o600, None),
    (0, 100, 0o644, "gives other users access"),
    (0, 200, 0o640, "group 200 has access"),
    (0, 100, 0o660, "gives the group more than 0640"),
    (300, 100, 0o640, "owner 300 has access"),
    (300, 100, 0o040, None),
])
def test_exceeds_judges_what_opens_the_key(uid: int, gid: int, mode: int,
                                           why: str | None) -> None:
    spec = parse_spec("0", "100", "0640")
    found = exceeds(spec, uid, gid, mode)
    assert (found is None) if why is None else (why in (found or ""))


def test_grant_search_lets_only_that_group_through(open_tmp: Path, group: str) -> None:
    closed = open_tmp / "closed"
    closed.mkdir(mode=0o700)
    (closed / "inner").mkdir(mode=0o755)
    (closed / "inner" / "file").write_text("x")
    fd = os.open(closed, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert acl.grant_search(fd, gid=grp.getgrnam(group).gr_gid) is True
        assert acl.grant_search(fd, gid=grp.getgrnam(group).gr_gid) is False  # idempotent
    finally:
        os.close(fd)
    target = str(closed / "inner" / "file")
    assert run_as(NOBODY, NOBODY, [group], "cat", target).stdout == "x"
    assert run_as(NOBODY, NOBODY, [group], "ls", str(closed)).returncode != 0
    assert run_as(NOBODY, NOBODY, None, "cat", target).returncode != 0
    assert stat.S_IMODE(closed.stat().st_mode) == 0o710  # the mask shows as group bits


def test_grant_search_never_widens_an_existing_entry(open_tmp: Path, group: str) -> None:
    """A named entry with rwx under a mask of r-- keeps r-- effective after our grant."""
    d = open_tmp / "masked"
    d.mkdir(mode=0o700)
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        entries = [acl.AclEntry(acl.USER_OBJ, acl.UNDEFINED_ID, 7),
                   acl.AclEntry(acl.GROUP_OBJ, acl.UNDEFINED_ID, 0),
                   acl.AclEntry(acl.GROUP, 4242, 7),
                   acl.AclEntry(acl.MASK, acl.UNDEFINED_ID, 4),
                   acl.AclEntry(acl.OTHER, acl.UNDEFINED_ID, 0)]
        os.setxattr(fd, acl.ACL_XATTR, acl.encode(entries))
        st = os.fstat(fd)
        before = acl.group_perms(st, acl.read_acl(fd), 4242)
        acl.grant_search(fd, gid=grp.getgrnam(group).gr_gid)
        after = acl.group_perms(os.fstat(fd), acl.read_acl(fd), 4242)
    finally:
        os.close(fd)
    assert before == after == 4


@pytest.mark.parametrize("value, message", [
    ("99999999999", "gid 99999999999 is out of range (0 to 4294967294)"),
    ("4294967295", "gid 4294967295 is out of range (0 to 4294967294)"),
    ("\u0661\u0662", "group '\u0661\u0662' does not exist"),  # digits, but not ASCII ones
])
def test_a_group_id_out_of_range_or_not_ascii_is_refused(value: str, message: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(None, value, None)
    assert str(err.value) == f"--key-group: {message}" or message in str(err.value)


def test_the_largest_id_chown_can_give_is_accepted() -> None:
    assert parse_spec("4294967294", "4294967294", None)[:2] == (4294967294, 4294967294)

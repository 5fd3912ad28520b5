"""The trust rule with POSIX ACLs (issue 23), on real files in the user's own temp dirs.

Unit tier: any user may put ACL entries on files it owns; the entries name ids that
need no name (setfacl takes numbers). Every check reads the disk, never a mock.
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from certbot_atomic_deploy.config import load, read_password
from certbot_atomic_deploy.publish import NewFile, file_in_place, publish_directory
from daemon_keys import acl
from daemon_keys.atomicfile import open_for_writing, write_file_atomic
from daemon_keys.errors import ConfigError, UnsafePathError
from daemon_keys.fs import Leftovers
from daemon_keys.trust import exposed_reason, unsafe_reason

OTHER_UID = 54321  # an id no one here is: it needs no name for an ACL entry
OTHER_GID = 54322
ME, MY_GROUP = os.geteuid(), os.getegid()

needs_setfacl = pytest.mark.skipif(shutil.which("setfacl") is None,
                                   reason="needs setfacl (Debian's acl package)")


def setfacl(*args: str) -> None:
    subprocess.run(["setfacl", *args], check=True, capture_output=True)


def getfacl(path: Path) -> str:
    return subprocess.run(["getfacl", "-cnp", str(path)], check=True, capture_output=True,
                          text=True).stdout


def _stat(mode: int, uid: int = 0, gid: int = 0) -> os.stat_result:
    return os.stat_result((stat.S_IFREG | mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))


E = acl.AclEntry
U = acl.UNDEFINED_ID


# -- the rule itself, on ACLs as the kernel stores them

@pytest.mark.parametrize("mode,entries,why", [
    (0o644, None, None),
    (0o664, [E(acl.USER_OBJ, U, 6), E(acl.USER, OTHER_UID, 6), E(acl.GROUP_OBJ, U, 4),
             E(acl.MASK, U, 6), E(acl.OTHER, U, 4)],
     f"the ACL entry user:{OTHER_UID}:rw- lets uid {OTHER_UID} write it"),
    # the mask cuts the named entry to r--: nobody but root writes
    (0o644, [E(acl.USER_OBJ, U, 6), E(acl.USER, OTHER_UID, 6), E(acl.GROUP_OBJ, U, 4),
             E(acl.MASK, U, 4), E(acl.OTHER, U, 4)], None),
    (0o674, [E(acl.USER_OBJ, U, 6), E(acl.GROUP, OTHER_GID, 7), E(acl.GROUP_OBJ, U, 4),
             E(acl.MASK, U, 7), E(acl.OTHER, U, 4)],
     f"the ACL entry group:{OTHER_GID}:rwx lets group {OTHER_GID} write it"),
    # group root may write (what sudo accepts), by mode bits or by a named entry
    (0o664, [E(acl.USER_OBJ, U, 6), E(acl.GROUP, 0, 6), E(acl.GROUP_OBJ, U, 4),
             E(acl.MASK, U, 6), E(acl.OTHER, U, 4)], None),
    # the group bits are the mask: the owning group itself only reads
    (0o664, [E(acl.USER_OBJ, U, 6), E(acl.USER, 0, 6), E(acl.GROUP_OBJ, U, 4),
             E(acl.MASK, U, 6), E(acl.OTHER, U, 4)], None),
])
def test_named_acl_entries_count_as_writers(mode: int, entries: list[acl.AclEntry] | None,
                                            why: str | None) -> None:
    assert unsafe_reason(_stat(mode, gid=50), (), last=True, entries=entries) == why


def test_a_secret_read_through_an_acl_entry_is_exposed() -> None:
    entries = [E(acl.USER_OBJ, U, 6), E(acl.USER, OTHER_UID, 4), E(acl.GROUP_OBJ, U, 0),
               E(acl.MASK, U, 4), E(acl.OTHER, U, 0)]
    assert exposed_reason(_stat(0o640), entries, group_may_read=True) == (
        f"the ACL entry user:{OTHER_UID}:r-- lets uid {OTHER_UID} read it")
    assert exposed_reason(_stat(0o600), None, group_may_read=False) is None
    assert exposed_reason(_stat(0o640), None, group_may_read=False) == (
        "mode 0640 lets the group read it")


# -- every input refuses an ACL that lets someone else write (or read) it

def _conf(tmp_path: Path) -> Path:
    """TMP/etc/atomic-deploy.conf, beside (not in) certbot's config dir TMP/le."""
    (tmp_path / "le").mkdir(mode=0o755)
    etc = tmp_path / "etc"
    etc.mkdir(mode=0o755)
    conf = etc / "atomic-deploy.conf"
    conf.write_text(f"[postfix]\nlineage = mail\npath = {tmp_path}/out/mail.pem\n"
                    "format = postfix\n")
    conf.chmod(0o644)
    return conf


@needs_setfacl
def test_a_config_another_user_may_write_through_an_acl_is_refused(tmp_path: Path) -> None:
    conf = _conf(tmp_path)
    load(str(conf), str(tmp_path / "le"))  # accepted as it is
    setfacl("-m", f"u:{OTHER_UID}:rw", str(conf))
    assert stat.S_IMODE(conf.stat().st_mode) == 0o664  # ls -l shows the mask as group bits
    with pytest.raises(ConfigError) as err:
        load(str(conf), str(tmp_path / "le"))
    line = str(err.value)
    assert f"user:{OTHER_UID}:rw-" in line and f"setfacl -b {conf}" in line, line
    assert "\n" not in line


@needs_setfacl
def test_a_config_dir_a_group_may_write_through_an_acl_is_refused(tmp_path: Path) -> None:
    conf = _conf(tmp_path)
    setfacl("-m", f"g:{OTHER_GID}:rwx", str(conf.parent))
    with pytest.raises(ConfigError, match=f"{conf.parent}: unsafe directory, the ACL entry "
                                          f"group:{OTHER_GID}:rwx lets group {OTHER_GID} "
                                          "write it"):
        load(str(conf), str(tmp_path / "le"))
    setfacl("-b", str(conf.parent))
    load(str(conf), str(tmp_path / "le"))


@needs_setfacl
def test_a_password_file_another_user_may_read_through_an_acl_is_refused(tmp_path: Path
                                                                         ) -> None:
    password = tmp_path / "keystore.pass"
    password.write_text("s3cret-pass\n")
    password.chmod(0o600)
    assert read_password("tomcat", str(password)) == b"s3cret-pass"
    setfacl("-m", f"u:{OTHER_UID}:r", str(password))
    with pytest.raises(ConfigError, match=f"user:{OTHER_UID}:r-- lets uid {OTHER_UID} read "
                                          "it; the password opens the keystore"):
        read_password("tomcat", str(password))


@needs_setfacl
def test_a_destination_directory_others_may_write_through_an_acl_is_refused(tmp_path: Path
                                                                            ) -> None:
    out = tmp_path / "out"
    out.mkdir(mode=0o755)
    setfacl("-m", f"u:{OTHER_UID}:rwx", str(out))
    with pytest.raises(UnsafePathError, match=f"user:{OTHER_UID}:rwx.*setfacl -b {out}"):
        open_for_writing(str(out))


# -- what we publish carries its mode's readers, whatever the directory's default ACL

@needs_setfacl
def test_a_published_file_sheds_the_default_acl_it_would_inherit(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir(mode=0o755)
    setfacl("-d", "-m", f"g:{OTHER_GID}:r", str(out))
    fd = open_for_writing(str(out))
    try:
        write_file_atomic(fd, "mail.pem", b"KEY", uid=ME, gid=MY_GROUP, mode=0o640,
                          where=str(out / "mail.pem"))
    finally:
        os.close(fd)
    published = out / "mail.pem"
    assert stat.S_IMODE(published.stat().st_mode) == 0o640
    assert f"group:{OTHER_GID}" not in getfacl(published), getfacl(published)
    with pytest.raises(OSError):  # no access ACL at all: the mode is the whole story
        os.getxattr(published, acl.ACL_XATTR)
    # Without our step (3) the same create would have let the group in: the control.
    control = os.open(out / "control", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.fchmod(control, 0o640)
    os.close(control)
    assert f"group:{OTHER_GID}:r--" in getfacl(out / "control")


@needs_setfacl
def test_a_version_directory_sheds_the_default_acl_too(tmp_path: Path) -> None:
    out = tmp_path / "tls"
    out.mkdir(mode=0o755)
    setfacl("-d", "-m", f"u:{OTHER_UID}:r", str(out))
    publish_directory(str(out), {"privkey.pem": NewFile(b"KEY", ME, MY_GROUP, 0o640)},
                      owner_uid=ME, keep=1, leftovers=Leftovers())
    version = out / "v1"
    for path in (version, version / "privkey.pem"):
        assert f"user:{OTHER_UID}" not in getfacl(path), (path, getfacl(path))
    assert "default:" not in getfacl(version)


@needs_setfacl
def test_an_acl_added_to_a_published_file_is_not_in_place(tmp_path: Path) -> None:
    path = tmp_path / "mail.pem"
    new = NewFile(b"KEY", ME, MY_GROUP, 0o640)
    fd = open_for_writing(str(tmp_path))
    try:
        write_file_atomic(fd, "mail.pem", new.data, uid=ME, gid=MY_GROUP, mode=0o640,
                          where=str(path))
    finally:
        os.close(fd)
    assert file_in_place(str(path), new)
    setfacl("-m", f"u:{OTHER_UID}:r", str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # the mode alone looks the same
    assert not file_in_place(str(path), new)


# -- no destination is one of the suite's own inputs

def test_a_target_over_the_config_itself_is_refused(tmp_path: Path) -> None:
    conf = _conf(tmp_path)
    conf.write_text(f"[postfix]\nlineage = mail\npath = {conf}\nformat = postfix\n")
    with pytest.raises(ConfigError, match=r"would write over this config itself"):
        load(str(conf), str(tmp_path / "le"))


@pytest.mark.parametrize("other", [
    "path = {dir}/second-name\nformat = key",  # the same file by another name (a hard link)
    "directory = {dir}",  # a versioned directory holding it: pruning could remove it
])
def test_a_target_over_another_targets_password_file_is_refused(tmp_path: Path,
                                                                other: str) -> None:
    conf = _conf(tmp_path)
    tls = tmp_path / "tls"
    tls.mkdir()
    password = tls / "keystore.pass"
    password.write_text("s3cret-pass\n")
    password.chmod(0o600)
    os.link(password, tls / "second-name")
    conf.write_text(f"[tomcat]\nlineage = mail\npath = {tmp_path}/out/k.p12\n"
                    f"format = pkcs12\npassword_file = {password}\n"
                    f"[other]\nlineage = mail\n{other.format(dir=tls)}\n")
    with pytest.raises(ConfigError, match=r"\[other\] (path|directory): .* would write over "
                                          r"\[tomcat\] password_file"):
        load(str(conf), str(tmp_path / "le"))


# -- output nobody can forge

@pytest.mark.parametrize("raw, shown", [
    ("mail.example.org", "mail.example.org"),
    ("x\n[postfix] published: FORGED", "x\\n[postfix] published: FORGED"),
    ("\x1b[2J\r\t\x7f\x85", "\\x1b[2J\\r\\t\\x7f\\x85"),
    ("caf\u00e9", "caf\u00e9"),  # printable non-ASCII stays readable
    ("a\u202eb\u2028c", "a\\u202eb\\u2028c"),  # a bidi override, a line separator
    (b"bad\xff".decode("utf-8", "surrogateescape"), "bad\\xff"),  # a non-UTF-8 file name
])
def test_outside_text_is_escaped_to_one_safe_line(raw: str, shown: str) -> None:
    from daemon_keys.text import escape
    assert escape(raw) == shown
    assert escape(raw).isprintable()


def test_an_error_naming_a_hostile_file_is_one_escaped_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from certbot_atomic_deploy import cli
    hostile = tmp_path / "evil\n[postfix] published: FORGED\x1b[2J.conf"
    code = cli.main(["--config-dir", str(tmp_path), "--config", str(hostile), "status"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "\x1b" not in err, err
    assert "evil\\n[postfix] published: FORGED\\x1b[2J.conf" in err

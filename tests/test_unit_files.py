"""PEM bundles, atomic writes, run state and ACL entries, in directories the user owns.

Unit tier: runs as any user with no network, on real files (``tmp_path``),
checking the disk afterwards.
"""
from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from certbot_atomic_deploy.pem import build, keystore_fingerprint, parse_blocks
from certbot_atomic_deploy.state import Record, StateDir, TargetState
from daemon_keys import acl
from daemon_keys.atomicfile import open_for_writing, write_file_atomic, write_new_file
from daemon_keys.errors import KeysError, LockError, UnsafePathError, ValidationError
from daemon_keys.fs import READ_DIR, Leftovers
from daemon_keys.trust import unsafe_reason
from tests.support.pki import make_chain, material, pem_of

ME, MY_GROUP = os.geteuid(), os.getegid()


# -- PEM text

@pytest.mark.parametrize("data,message", [
    (b"", "empty file"),
    (b"\x30\x82\x01\x0a", "not PEM (it looks like DER"),
    (b"hello", "not PEM (no PEM block)"),
    (b"-----BEGIN CERTIFICATE-----\nMIIB\n", "truncated PEM"),
])
def test_unusable_pem_is_one_line_naming_the_file(data: bytes, message: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse_blocks(data, "/le/archive/mail/cert3.pem")
    assert str(err.value).startswith("/le/archive/mail/cert3.pem: " + message)
    assert "\n" not in str(err.value)


def test_crlf_pem_is_read_as_lf() -> None:
    key, _chain = make_chain(["a.example.org"])
    blocks = parse_blocks(pem_of(key).replace(b"\n", b"\r\n"), "k")
    assert blocks[0].text == pem_of(key) and blocks[0].label == "PRIVATE KEY"


@pytest.mark.parametrize("fmt,order", [
    ("key", ["KEY"]), ("cert", ["leaf"]), ("chain", ["inter"]),
    ("fullchain", ["leaf", "inter"]), ("postfix", ["KEY", "leaf", "inter"]),
    ("key+fullchain", ["KEY", "leaf", "inter"]), ("haproxy", ["leaf", "inter", "KEY"]),
    ("fullchain+key", ["leaf", "inter", "KEY"]),
])
def test_each_format_puts_the_blocks_in_its_order(fmt: str, order: list[str]) -> None:
    key, chain = make_chain(["a.example.org"])
    pems = {"KEY": pem_of(key), "leaf": chain[0].public_bytes(serialization.Encoding.PEM),
            "inter": chain[1].public_bytes(serialization.Encoding.PEM)}
    assert build(fmt, material(key, chain)) == b"".join(pems[p] for p in order)


def test_a_keystore_is_due_again_when_its_password_or_lineage_changes() -> None:
    key, chain = make_chain(["a.example.org"])
    mat = material(key, chain)
    first = keystore_fingerprint(mat, b"pw")
    assert keystore_fingerprint(mat, b"pw") == first
    assert keystore_fingerprint(mat, b"pw2") != first
    assert keystore_fingerprint(mat._replace(lineage="other"), b"pw") != first


# -- atomic writes

def _dir(path: Path) -> int:
    return os.open(path, READ_DIR)


def test_a_new_file_has_its_owner_and_mode_and_no_temp_is_left(tmp_path: Path) -> None:
    fd = _dir(tmp_path)
    try:
        write_file_atomic(fd, "k.pem", b"secret", uid=ME, gid=MY_GROUP, mode=0o640,
                          where=str(tmp_path / "k.pem"))
        write_file_atomic(fd, "k.pem", b"newer", uid=ME, gid=MY_GROUP, mode=0o600,
                          where=str(tmp_path / "k.pem"))
    finally:
        os.close(fd)
    st = os.lstat(tmp_path / "k.pem")
    assert (tmp_path / "k.pem").read_bytes() == b"newer"
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, ME, MY_GROUP)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.pem"]


@pytest.mark.parametrize("planted", ["symlink", "directory", "fifo"])
def test_something_other_than_a_file_at_the_destination_is_refused(
        tmp_path: Path, planted: str) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    dest = tmp_path / "k.pem"
    plant: dict[str, Callable[[], object]] = {
        "symlink": lambda: dest.symlink_to(victim), "directory": dest.mkdir,
        "fifo": lambda: os.mkfifo(dest)}
    plant[planted]()
    fd = _dir(tmp_path)
    try:
        with pytest.raises(UnsafePathError) as err:
            write_file_atomic(fd, "k.pem", b"secret", uid=ME, gid=MY_GROUP, mode=0o600,
                              where=str(dest))
    finally:
        os.close(fd)
    assert str(err.value).startswith(f"{dest}: ")
    assert victim.read_bytes() == b"untouched"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.pem", "victim"]


@pytest.mark.parametrize("name", ["../k.pem", "", ".", "..", "a/b"])
def test_only_a_plain_file_name_is_written(tmp_path: Path, name: str) -> None:
    fd = _dir(tmp_path)
    try:
        with pytest.raises(UnsafePathError, match="is not a plain file name"):
            write_file_atomic(fd, name, b"x", uid=ME, gid=MY_GROUP, mode=0o600, where="w")
    finally:
        os.close(fd)


def test_write_new_file_never_replaces_what_is_there(tmp_path: Path) -> None:
    (tmp_path / "privkey.pem").write_bytes(b"old")
    fd = _dir(tmp_path)
    try:
        with pytest.raises(KeysError, match="creating the file"):
            write_new_file(fd, "privkey.pem", b"new", uid=ME, gid=MY_GROUP, mode=0o600,
                           where="privkey.pem")
    finally:
        os.close(fd)
    assert (tmp_path / "privkey.pem").read_bytes() == b"old"


def _stat(uid: int, gid: int, mode: int) -> os.stat_result:
    return os.stat_result((stat.S_IFDIR | mode, 0, 0, 2, uid, gid, 0, 0, 0, 0))


@pytest.mark.parametrize("uid,gid,mode,last,why", [
    (0, 0, 0o755, True, None),
    (0, 0, 0o775, True, None),  # root's group may write
    (0, 0, 0o1777, False, None),  # /tmp above the destination
    (0, 0, 0o1777, True, "writable by others (mode 1777)"),
    (0, 50, 0o775, True, "writable by group 50 (mode 0775)"),
    (0, 0, 0o757, False, "writable by others (mode 0757)"),
    (4242, 0, 0o755, True, "owned by uid 4242, not root"),
])
def test_unsafe_directory_rules(uid: int, gid: int, mode: int, last: bool,
                                why: str | None) -> None:
    assert unsafe_reason(_stat(uid, gid, mode), (), last=last) == why


def test_a_destination_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)
    with pytest.raises(UnsafePathError, match=f"{out}: unsafe directory, writable by others"):
        open_for_writing(str(out))


def test_a_symlinked_destination_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(UnsafePathError, match="is a symlink; refusing to follow it"):
        open_for_writing(str(tmp_path / "link"))


def test_a_relative_destination_is_refused() -> None:
    with pytest.raises(UnsafePathError, match="not an absolute path"):
        open_for_writing("out/tls")


# -- run state

def test_leftovers_are_the_exact_temp_names_of_one_file_and_handed_out_once(
        tmp_path: Path) -> None:
    names = {".a.0123456789abcdef.tmp": "a", ".a.b.0123456789abcdef.tmp": "a.b",
             ".a.fedcba9876543210.tmp": "a", ".a.notatoken.tmp": None, "a": None,
             ".a.0123456789ABCDEF.tmp": None}
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    fd = _dir(tmp_path)
    try:
        leftovers = Leftovers()
        removed = leftovers.remove(fd, "a")
        assert sorted(removed) == sorted(n for n, owner in names.items() if owner == "a")
        assert leftovers.remove(fd, "a") == []  # once per run: the directory is not re-read
        assert leftovers.names(fd) == ["a.b"]
    finally:
        os.close(fd)
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {n for n, owner in names.items() if owner != "a"}  # a.b's is not a's


def _record(seq: int) -> Record:
    return Record(seq=seq, lineage="mail", version=seq, serial="ab", not_after="2027-01-01",
                  names=["mail.example.org"], published_at="2026-11-23T00:00:00Z")


def test_state_keeps_records_and_published_bytes_across_loads(tmp_path: Path) -> None:
    state = StateDir(str(tmp_path / "state"))
    state.save("postfix", TargetState(current=_record(1)), b"-----BEGIN v1")
    state.save("jks", TargetState(current=_record(1)), b"\x30\x82binary")
    state.flush()
    assert stat.S_IMODE(os.stat(tmp_path / "state").st_mode) == 0o700
    again = StateDir(str(tmp_path / "state"))
    assert again.load("postfix").current == _record(1)
    assert again.file_version("postfix", 1) == b"-----BEGIN v1"
    assert again.file_version("jks", 1) == b"\x30\x82binary"
    with pytest.raises(KeysError, match=r"publish 7 of \[postfix\] is no longer kept"):
        again.file_version("postfix", 7)


def test_state_keeps_only_the_last_versions(tmp_path: Path) -> None:
    state = StateDir(str(tmp_path / "state"))
    target = TargetState()
    for seq in range(1, 6):
        target.history = [*target.history, target.current] if target.current else []
        target.current = _record(seq)
        state.save("t", target, f"v{seq}".encode(), keep=2)
    assert [r.seq for r in target.history] == [3, 4]
    state.flush()
    assert sorted(os.listdir(tmp_path / "state" / "kept")) == ["t.3", "t.4", "t.5"]
    assert StateDir(str(tmp_path / "state")).file_version("t", 3) == b"v3"
    # state.json holds records only: the bytes are in kept/, one file per publish
    assert b"v3" not in (tmp_path / "state" / "state.json").read_bytes()


def test_a_run_writes_the_kept_copy_of_what_it_published_only(tmp_path: Path) -> None:
    state = StateDir(str(tmp_path / "state"))
    for name in ("a", "b"):
        state.save(name, TargetState(current=_record(1)), name.encode())
    state.flush()
    kept = tmp_path / "state" / "kept"
    before = {p.name: p.stat().st_ino for p in kept.iterdir()}
    again = StateDir(str(tmp_path / "state"))
    b = again.load("b")
    b.history, b.current = [b.current] if b.current else [], _record(2)
    again.save("b", b, b"b2", keep=1)
    again.flush()
    after = {p.name: p.stat().st_ino for p in kept.iterdir()}
    assert after["a.1"] == before["a.1"] and after["b.1"] == before["b.1"]  # untouched
    assert set(after) == {"a.1", "b.1", "b.2"}


def test_a_state_written_by_0_1_0_keeps_its_bytes(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir(mode=0o700)
    record = _record(1)._asdict()
    (tmp_path / "state" / "state.json").write_text(json.dumps({"targets": {
        "pem": {"current": record, "history": [], "files": {"1": "-----BEGIN x"}},
        "p12": {"current": record, "history": [], "files": {"1": "base64:MII="}}}}))
    state = StateDir(str(tmp_path / "state"))
    assert state.file_version("pem", 1) == b"-----BEGIN x"
    state.flush()
    again = StateDir(str(tmp_path / "state"))
    assert (again.file_version("pem", 1), again.file_version("p12", 1)) == (
        b"-----BEGIN x", b"0\x82")
    assert "files" not in json.loads((tmp_path / "state" / "state.json").read_text())[
        "targets"]["pem"]


@pytest.mark.parametrize("body", ["{not json", "[]", '{"targets": []}',
                                  '{"targets": {"t": {"current": {"seq": 1}}}}'])
def test_unreadable_state_is_one_line_saying_what_to_do(tmp_path: Path, body: str) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "state.json").write_text(body)
    with pytest.raises(KeysError, match=r"unreadable state .*move it away and deploy again"):
        StateDir(str(tmp_path / "state")).load("t")


def test_a_held_lock_times_out_in_one_line(tmp_path: Path) -> None:
    holder = StateDir(str(tmp_path / "state"))
    with holder.lock(1), pytest.raises(LockError, match=r"has held it for over 0\.2 s"), \
            StateDir(str(tmp_path / "state")).lock(0.2):
        pass


# -- POSIX ACL entries, as the kernel stores them

def test_acl_entries_encode_as_the_kernel_xattr() -> None:
    entries = [acl.AclEntry(acl.OTHER, acl.UNDEFINED_ID, 0),
               acl.AclEntry(acl.USER_OBJ, acl.UNDEFINED_ID, 7),
               acl.AclEntry(acl.GROUP, 117, acl.SEARCH)]
    data = acl.encode(entries)
    assert data[:4] == (2).to_bytes(4, "little")  # version 2
    # sorted by tag: USER_OBJ (1), GROUP (8), OTHER (0x20); each <u16 tag, u16 perm, u32 id>
    assert data[4:12] == bytes([1, 0, 7, 0, 0xFF, 0xFF, 0xFF, 0xFF])
    assert data[12:20] == bytes([8, 0, 1, 0, 117, 0, 0, 0])
    assert acl.decode(data) == sorted(entries)


def test_an_acl_of_another_version_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown POSIX ACL format"):
        acl.decode((3).to_bytes(4, "little"))


def test_a_search_grant_lets_one_group_through_and_revoke_takes_it_back(tmp_path: Path) -> None:
    closed = tmp_path / "live"
    closed.mkdir(mode=0o700)
    fd = os.open(closed, READ_DIR)
    try:
        try:
            changed = acl.grant_search(fd, gid=MY_GROUP + 1)
        except OSError as exc:
            pytest.skip(f"this filesystem takes no POSIX ACLs ({exc.strerror})")
        assert changed
        entries = acl.read_acl(fd) or []
        assert acl.AclEntry(acl.GROUP, MY_GROUP + 1, acl.SEARCH) in entries
        assert stat.S_IMODE(os.fstat(fd).st_mode) & 0o007 == 0  # others still nothing
        assert acl.grant_search(fd, gid=MY_GROUP + 1) is False  # idempotent
        assert acl.revoke(fd, acl.GROUP, MY_GROUP + 1)
        assert acl.AclEntry(acl.GROUP, MY_GROUP + 1, acl.SEARCH) not in (acl.read_acl(fd) or [])
    finally:
        os.close(fd)


# -- a reader of current keeps its version for a time, not only a count (issue 23)

def _publish_versions(root: Path, count: int, keep_seconds: float) -> None:
    from certbot_atomic_deploy.publish import NewFile, publish_directory
    for i in range(count):
        publish_directory(str(root), {"privkey.pem": NewFile(f"KEY{i}".encode(), ME, MY_GROUP,
                                                             0o600)},
                          owner_uid=ME, keep=0, keep_seconds=keep_seconds,
                          leftovers=Leftovers())


def test_a_version_outlives_its_switch_by_keep_seconds_however_many_publishes(
        tmp_path: Path) -> None:
    tls = tmp_path / "tls"
    _publish_versions(tls, 5, keep_seconds=3600)
    # keep = 0 would have left only v5: every older one stopped being current just now.
    assert sorted(p.name for p in tls.glob("v*")) == ["v1", "v2", "v3", "v4", "v5"]
    # v1 and v2 stopped being current over an hour ago (their mtime says when):
    old = time.time() - 3601
    for name in ("v1", "v2"):
        os.utime(tls / name, (old, old))
    _publish_versions(tls, 1, keep_seconds=3600)
    assert sorted(p.name for p in tls.glob("v*")) == ["v3", "v4", "v5", "v6"]


def test_the_switch_stamps_when_a_version_stopped_being_current(tmp_path: Path) -> None:
    from certbot_atomic_deploy.publish import rollback_directory
    tls = tmp_path / "tls"
    _publish_versions(tls, 2, keep_seconds=3600)
    long_ago = time.time() - 10 * 86400
    for name in ("v1", "v2"):
        os.utime(tls / name, (long_ago, long_ago))
    before = time.time()
    assert rollback_directory(str(tls), ME) == "v1"  # v2 stops being current now
    assert (tls / "v2").stat().st_mtime >= before - 1
    assert (tls / "v1").stat().st_mtime == pytest.approx(long_ago)  # current: untouched

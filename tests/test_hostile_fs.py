"""A hostile filesystem matrix: planted links, unsafe directories, full, read-only, mounts.

Each case: the deploy is refused or fails with one clear line, nothing is written
outside the target, and the old version is intact. Mounts are real (tmpfs, bind).
"""
from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.site import (
    basic_conf,
    deploy,
    new_version,
    one_line,
    snapshot,
    temp_files,
    write_conf,
)
from tests.support.users import NOBODY


@pytest.fixture
def published(site: Path) -> Path:
    """SITE with v1 published to SITE/out/mail.pem and lineage 'mail' moved on to v2."""
    basic_conf(site)
    assert deploy(site / "le", "deploy", "--all").returncode == 0
    new_version(site)
    return site


@pytest.fixture
def victim(site: Path) -> Iterator[Path]:
    path = site / "victim"
    path.write_text("precious\n")
    path.chmod(0o600)
    yield path
    assert path.read_text() == "precious\n"  # nothing ever wrote through a planted name


def _refused(site: Path, expect: str) -> None:
    dest = site / "out" / "mail.pem"
    old = dest.read_bytes() if dest.is_file() and not dest.is_symlink() else None
    before = snapshot(site / "out")
    result = deploy(site / "le", "deploy", "--all")
    assert result.returncode == 1
    line = one_line(result)
    assert expect in line, line
    assert snapshot(site / "out") == before
    if old is not None:
        assert dest.read_bytes() == old


def test_hard_link_at_destination_is_refused(published: Path, victim: Path) -> None:
    dest = published / "out" / "mail.pem"
    dest.unlink()
    os.link(victim, dest)
    _refused(published, "has 2 hard links")


def test_symlink_at_destination_is_refused(published: Path, victim: Path) -> None:
    dest = published / "out" / "mail.pem"
    dest.unlink()
    dest.symlink_to(victim)
    _refused(published, "is a symlink; refusing")


def test_links_at_temp_names_are_removed_not_followed(published: Path, victim: Path) -> None:
    out = published / "out"
    (out / ".mail.pem.0123456789abcdef.tmp").symlink_to(victim)
    os.link(victim, out / ".mail.pem.fedcba9876543210.tmp")
    result = deploy(published / "le", "deploy", "--all")
    assert result.returncode == 0, result.stderr
    assert temp_files(out) == []


def test_directory_in_place_of_destination_is_refused(site: Path) -> None:
    basic_conf(site)
    (site / "out" / "mail.pem").mkdir()
    _refused(site, "exists and is not a regular file")


def test_destination_directory_owned_by_another_user_is_refused(published: Path) -> None:
    os.chown(published / "out", NOBODY, NOBODY)
    _refused(published, "unsafe directory, owned by uid 65534")


def test_destination_directory_writable_by_a_group_is_refused(published: Path) -> None:
    out = published / "out"
    os.chown(out, 0, NOBODY)
    out.chmod(0o775)
    _refused(published, f"unsafe directory, writable by group {NOBODY}")


def test_parent_writable_by_others_without_sticky_bit_is_refused(site: Path) -> None:
    nested = site / "out" / "tls"
    nested.mkdir(mode=0o755)
    write_conf(site / "le", f"[t]\nlineage = mail\npath = {nested}/mail.pem\nformat = key\n")
    (site / "out").chmod(0o777)
    _refused(site, f"{site / 'out'}: unsafe directory, writable by others")


@pytest.fixture
def tmpfs(site: Path) -> Iterator[Path]:
    """SITE/out replaced by a 256 KiB tmpfs (mounted by the test, unmounted after)."""
    out = site / "out"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(out)],
                   check=True)
    try:
        yield out
    finally:
        subprocess.run(["umount", "-l", str(out)], check=False)


def test_full_filesystem_fails_cleanly(site: Path, tmpfs: Path) -> None:
    basic_conf(site)
    assert deploy(site / "le", "deploy", "--all").returncode == 0
    new_version(site)
    filler = tmpfs / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=4k"], capture_output=True)
    before = snapshot(tmpfs)
    result = deploy(site / "le", "deploy", "--all")
    assert result.returncode == 1
    line = one_line(result)
    assert "No space left on device" in line and "the filesystem is full" in line
    assert snapshot(tmpfs) == before


def test_read_only_filesystem_fails_cleanly(site: Path, tmpfs: Path) -> None:
    basic_conf(site)
    assert deploy(site / "le", "deploy", "--all").returncode == 0
    new_version(site)
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    _refused(site, "Read-only file system")


def test_destination_on_another_filesystem_than_its_temp_file(published: Path,
                                                             open_tmp: Path) -> None:
    """A file bind-mounted over the destination: the temp file cannot be renamed over it."""
    dest = published / "out" / "mail.pem"
    elsewhere = open_tmp / "elsewhere.pem"
    elsewhere.write_bytes(dest.read_bytes())
    subprocess.run(["mount", "--bind", str(elsewhere), str(dest)], check=True)
    try:
        _refused(published, "is a mount point")
    finally:
        subprocess.run(["umount", "-l", str(dest)], check=False)

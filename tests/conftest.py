"""Fixtures: one real pebble per test session, a private certbot per test."""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import make_chain, pem_of, write_lineage

from testbed import Certbot, Pebble

REPORTS: list[str] = []


def report(line: str) -> None:
    """A figure to print at the end of the run (coverage of fault injection, read counts)."""
    REPORTS.append(line)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORTS:
        terminalreporter.section("figures")
        for line in REPORTS:
            terminalreporter.write_line(line)


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.geteuid() != 0:
        pytest.exit("the suite runs as root: it changes real owners, creates real users and "
                    "groups, and runs readers as other uids (run it with sudo, or in a VM)",
                    returncode=2)


@pytest.fixture(scope="session")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    server = Pebble.start(tmp_path_factory.mktemp("pebble"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temp dir that other users can traverse (pytest's own is under a 0700 dir).

    Tests that run a reader as another uid (setpriv) need every ancestor of the
    certbot config dir searchable, as /etc is on a real system.
    """
    path = Path(tempfile.mkdtemp(prefix="cdk-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def site(open_tmp: Path) -> Path:
    """A hand-made certbot config dir SITE/le with lineage 'mail' (v1), and SITE/out."""
    key, chain = make_chain(["mail.example.org", "smtp.example.org"])
    write_lineage(open_tmp / "le", "mail", 1, pem_of(key), chain)
    (open_tmp / "out").mkdir(mode=0o755)
    return open_tmp


@pytest.fixture
def certbot(pebble: Pebble, open_tmp: Path) -> Certbot:
    root = open_tmp / "certbot"
    root.mkdir()
    root.chmod(0o755)  # like /etc: certbot would otherwise create it 0700
    return Certbot(pebble=pebble, root=root)


@pytest.fixture
def group() -> Iterator[str]:
    """A real system group, created for the test and removed after it."""
    name = f"cdk{secrets.token_hex(4)}"
    subprocess.run(["groupadd", "--system", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["groupdel", name], check=False)


@pytest.fixture
def user() -> Iterator[str]:
    """A real system user (no home, no login), created for the test and removed after it."""
    name = f"cdku{secrets.token_hex(3)}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False)

"""Fixtures: one real pebble per test session, a private certbot per test."""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.figures import REPORTS
from tests.support.site import make_site
from tests.support.testbed import Certbot, Pebble
from tests.support.users import NOBODY, run_as


def pytest_configure(config: pytest.Config) -> None:
    """A suite started in the background by a non-interactive shell (scripts/test &, or
    under nohup) inherits SIGINT ignored, and so would every command it runs: the tests
    that press Ctrl-C on a run would see nothing happen. Handle it again here (children
    start with the default action)."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORTS:
        terminalreporter.section("figures")
        for line in REPORTS:
            terminalreporter.write_line(line)


# Two tiers. The unit tier (no marker) runs as any user with no network: pure rules,
# parsing, PEM, validation, keystores, atomic writes in the user's own temp dirs, exit
# codes; it is what a distribution's package build runs. The root tier (marker "root")
# changes real owners, creates real users and groups, runs readers as other uids, runs
# the real certbot against pebble and real daemons. Markers are applied here, from the
# fixtures a test takes (the names of the fixtures below): one that takes the certbot or
# pebble fixture is certbot-facing ("certbot", run on every certbot row); one that takes
# any of ROOT_FIXTURES, or is certbot-facing, needs root. A test that needs either
# without such a fixture says so with the marker.
CERTBOT_FIXTURES = frozenset({"pebble", "certbot"})
ROOT_FIXTURES = CERTBOT_FIXTURES | {"site", "open_tmp", "run_dir", "group", "user",
                                     "outsider_python"}
ROOT_ONLY = ("needs root (real owners, users, groups, certbot and pebble): "
             "the root tier; run the suite as root for it")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & CERTBOT_FIXTURES:
            item.add_marker(pytest.mark.certbot)
        if fixtures & ROOT_FIXTURES or item.get_closest_marker("certbot") is not None:
            item.add_marker(pytest.mark.root)
            if item.path.name.startswith("test_unit_"):  # it would skip in the unit tier
                raise pytest.UsageError(
                    f"{item.nodeid}: a unit-tier module's test takes a root fixture "
                    f"({', '.join(sorted(fixtures & ROOT_FIXTURES)) or 'certbot'}): name "
                    "a module-local fixture otherwise (e.g. own_site), or move the test "
                    "to the root tier")
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason=ROOT_ONLY)
        for item in items:
            if item.get_closest_marker("root") is not None:
                item.add_marker(skip)


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
def run_dir() -> Iterator[Path]:
    """A temp dir below no world-writable directory (/run, not /tmp), as sendmail wants."""
    path = Path(tempfile.mkdtemp(prefix="cdk-test-", dir="/run"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def site(open_tmp: Path) -> Path:
    """A hand-made certbot config dir SITE/le with lineage 'mail' (v1), and SITE/out, in a
    temp dir other uids can traverse."""
    return make_site(open_tmp)


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


@pytest.fixture(scope="session")
def outsider_python() -> str:
    """This interpreter, when another uid can run it; else the test is skipped, saying why.

    A row whose Python lives under root's 0700 home (pyenv's) cannot run a reader
    or a certbot as uid 65534; Debian's /usr/bin/python3 and venvs over it can.
    """
    probe = run_as(NOBODY, NOBODY, None, sys.executable, "-c", "pass")
    if probe.returncode != 0:
        why = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"uid {NOBODY} cannot run this row's interpreter {sys.executable} ({why})")
    return sys.executable

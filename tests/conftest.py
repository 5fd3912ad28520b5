"""Fixtures: one real pebble per test session, a private certbot per test."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from testbed import Certbot, Pebble


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "root: needs to run as root (real chown, real uids)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: it changes real file owners")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    server = Pebble.start(tmp_path_factory.mktemp("pebble"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def certbot(pebble: Pebble, tmp_path: Path) -> Certbot:
    return Certbot(pebble=pebble, root=tmp_path / "certbot")

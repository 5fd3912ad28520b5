"""Figures a test reports (coverage of fault injection, read counts), printed at the end of
the run by ``tests/conftest.py``."""
from __future__ import annotations

REPORTS: list[str] = []


def report(line: str) -> None:
    REPORTS.append(line)

"""One error tree for certbot_perms. Every message is one self-contained line:
what is wrong, where, and what to do. Imports no certbot."""
from __future__ import annotations

import os


class PermsError(Exception):
    """Root of every error this package raises on purpose."""


class SpecError(PermsError):
    """A key owner, group or mode that cannot be used (unknown, malformed, too open)."""


class LineageError(PermsError):
    """A lineage that does not exist or whose layout cannot be trusted."""


def describe_unexpected(exc: BaseException) -> str:
    """One line for an exception nobody raised on purpose (a bug, or an environment nobody
    foresaw): what, where, and what to do. Both commands print it instead of a traceback."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    where = (f" in {frames[-1].name} ({os.path.basename(frames[-1].filename)}:"
             f"{frames[-1].lineno})") if frames else ""
    return (f"unexpected {type(exc).__name__}: {exc}{where} (the run stopped there; run it "
            "again with --debug for the traceback, and report it)")

"""Running a command as another uid, through the real kernel (``setpriv``), never a mock."""
from __future__ import annotations

import subprocess

NOBODY = 65534  # the outsider: no key spec ever names it


def as_user(uid: int, gid: int, groups: list[str] | None = None) -> list[str]:
    """The argv prefix that runs a command with exactly this uid, gid and supplementary
    groups (none when ``groups`` is None)."""
    creds = [f"--reuid={uid}", f"--regid={gid}"]
    creds += [f"--groups={','.join(groups)}"] if groups else ["--clear-groups"]
    return ["setpriv", *creds]


def run_as(uid: int, gid: int, groups: list[str] | None, *cmd: str,
           timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` as uid:gid with ``groups``; its output captured as text."""
    return subprocess.run([*as_user(uid, gid, groups), *cmd], capture_output=True, text=True,
                          timeout=timeout)

"""The spool through which an unprivileged certbot says "something changed".

Imports no certbot and no cryptography. In the split setup (README: "Least
privilege") certbot runs as its own user, and its deploy hook is
``certbot-atomic-deploy notify``: it drops a marker named after the renewed
lineage into a spool directory that user owns, and does nothing else. The
root side, ``certbot-atomic-deploy deploy --spool DIR`` (started by systemd's
``DirectoryNotEmpty=`` path unit, and by a timer as a backstop), takes every
marker away *before* it deploys, so a marker dropped while it runs starts the
next run instead of being lost. A marker only says "run": its name and bytes
are never trusted, the run deploys every target, and it reads each lineage as
hostile input (:func:`certbot_atomic_deploy.pem.read_lineage`).
"""
from __future__ import annotations

import datetime
import errno
import os
import re

from daemon_keys.atomicfile import open_for_writing, write_file_atomic
from daemon_keys.errors import KeysError, UnsafePathError, UsageError, reason
from daemon_keys.fs import open_dir

DEFAULT_SPOOL = "/var/spool/certbot-atomic-deploy"
_MARKER = re.compile(r"[^A-Za-z0-9._-]")


def notify(spool: str, lineage: str) -> str:
    """Drop (or replace) the marker for ``lineage``; return its path."""
    name = _MARKER.sub("_", lineage).lstrip(".") or "lineage"
    try:
        dir_fd = open_for_writing(spool, owner_uid=os.geteuid())
    except UnsafePathError as exc:
        raise UsageError(f"notify: spool {spool}: {exc} (create it: install -d -o "
                         "CERTBOT_USER -m 0755 DIR)") from None
    try:
        stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        write_file_atomic(dir_fd, name, f"{stamp}\n".encode(), uid=os.geteuid(),
                          gid=os.getegid(), mode=0o644, where=os.path.join(spool, name))
    finally:
        os.close(dir_fd)
    return os.path.join(spool, name)


def take(spool: str) -> tuple[list[str], list[str]]:
    """Remove every marker of the spool (and a crashed notify's temp file); return their
    names, sorted, and one line for each entry left alone.

    Only what ``unlink`` removes is taken: files, and whatever else the spool's owner
    put there that is not a directory (``unlink`` never follows a symlink). An empty
    directory is removed too; one with entries is left alone with its line: it is not
    a marker, and it never stops the run (the run deploys every target anyway).
    Nothing in the spool is read or followed.
    """
    try:
        dir_fd = open_dir(spool)
    except UnsafePathError as exc:
        raise UsageError(f"--spool {spool}: {exc}") from None
    try:
        taken, skipped = [], []
        for name in sorted(os.listdir(dir_fd)):
            try:
                os.unlink(name, dir_fd=dir_fd)
            except FileNotFoundError:
                continue
            except OSError as exc:
                if exc.errno not in (errno.EISDIR, errno.EPERM):
                    raise KeysError(f"--spool {spool}: cannot take {name}: {reason(exc)} "
                                    "(fix the cause and run again)") from None
                try:
                    os.rmdir(name, dir_fd=dir_fd)
                except OSError:
                    skipped.append(f"--spool {spool}: {name}: a directory, not a marker; "
                                   "left alone (remove it: only markers belong there)")
                    continue
            taken.append(name)
        return taken, skipped
    finally:
        os.close(dir_fd)

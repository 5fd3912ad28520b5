"""One error tree for both commands; each class carries its exit code. Imports only ``os``.

Every message is one self-contained line, "<where>: what is wrong (what to do)":
Certbot shows a failing hook only as "reported error code N" plus its stderr.

Exit codes, the same for both commands:

====  ==========================================================================
0     done (``check``: nothing found)
1     something failed or was found; whatever could be done was done
2     usage, configuration, or the lock (a run that stops on it changed nothing)
====  ==========================================================================
"""
from __future__ import annotations

import errno
import os

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # the shell's 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM (systemctl stop, a timeout, kill)
# The table above, for both commands' man pages.
EXIT_STATUS = """0: done (check: nothing found).

1: something failed or was found; whatever could be done was done, and stderr
has one line per failure.

2: usage, a configuration file (or a file it names) or a key spec, or the lock.
A command that stops on it has changed nothing; a deploy run whose error
concerns one target still publishes the others.

130: interrupted (Ctrl-C); what was written is whole, and what was not finished
(a check, a reload) is pending for the next run (certbot-atomic-deploy).

143: terminated (SIGTERM: systemctl stop, a unit's timeout, kill); the same as 130."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception so that it unwinds like Ctrl-C: the running
    command's processes are killed, what was not finished stays pending, one line."""


class KeysError(Exception):
    """Root of every error raised on purpose. Exit code 1."""

    exit_code = EXIT_FAILED


class UsageError(KeysError):
    """The command line, a configuration file or a key spec is wrong. Exit code 2."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """The deploy configuration (or a file it names) is unreadable or invalid."""


class SpecError(UsageError):
    """A key owner, group or mode that cannot be used (unknown, malformed, too open)."""


class LockError(UsageError):
    """Another run holds the lock for too long."""


class LineageError(KeysError):
    """A lineage that does not exist or whose layout cannot be trusted."""


class ValidationError(KeysError):
    """Key or certificate material that must not be published."""


class UnsafePathError(KeysError):
    """A path that cannot be read or written safely (symlink, writable by others, ...)."""


class WriteError(KeysError):
    """A write, rename or sync failed; the destination is left as it was."""


class CommandError(KeysError):
    """A check or reload command failed."""


_HINTS = {
    errno.EBUSY: ("the destination is a mount point (a bind mount?), so nothing can be "
                  "renamed over it; bind-mount its directory instead, or point the target "
                  "elsewhere"),
    errno.EXDEV: ("temp file and destination are on different filesystems (a bind mount?); "
                  "point the target at a path on one filesystem"),
    errno.EPERM: "the file may be immutable (lsattr; chattr -i) or the filesystem refuses it",
    errno.ENOSPC: "the filesystem is full; free space and run again",
    errno.EDQUOT: "the disk quota is exhausted; free space and run again",
    errno.EROFS: "the filesystem is mounted read-only",
    errno.EACCES: "permission denied; run as root",
    errno.EIO: "an I/O error: check the disk (dmesg) and run again",
}


def reason(exc: OSError) -> str:
    """Why an ``OSError`` happened, in the kernel's words ("Permission denied")."""
    return os.strerror(exc.errno) if exc.errno else str(exc)


def describe_os_error(exc: OSError, where: str = "", action: str = "") -> str:
    """The one line for an ``OSError``: '<where>: <action> failed: <why> (<hint>)'.

    ``where`` defaults to the path the error names; ``action`` may be empty.
    """
    where = where or (str(exc.filename) if exc.filename else "")
    why = reason(exc)
    hint = _HINTS.get(exc.errno or 0, "fix the cause and run again")
    head = f"{where}: " if where else ""
    doing = f"{action} failed: " if action else ""
    return f"{head}{doing}{why} ({hint})"


def write_failed(where: str, action: str, exc: OSError) -> WriteError:
    """A :class:`WriteError` in the house format, for a failed step of a write."""
    return WriteError(describe_os_error(exc, where, action))


def exit_code(exc: BaseException) -> int:
    """The exit code for an exception that ends a command: its class's, else 1."""
    return exc.exit_code if isinstance(exc, KeysError) else EXIT_FAILED


def describe_unexpected(exc: BaseException) -> str:
    """One line for an exception nobody raised on purpose (a bug, or an environment nobody
    foresaw): what, where, and what to do. Both commands print it instead of a traceback."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    where = (f" in {frames[-1].name} ({os.path.basename(frames[-1].filename)}:"
             f"{frames[-1].lineno})") if frames else ""
    return (f"unexpected {type(exc).__name__}: {exc}{where} (the run stopped there; run it "
            "again with --debug for the traceback, and report it)")

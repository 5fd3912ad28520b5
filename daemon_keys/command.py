"""What both command lines share: global options in either place, ``--version``, and
errors turned into one line and an exit code (the table in :mod:`.errors`).

Imports no argparse at module level: the deploy hook's no-argument path never
builds a parser.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from daemon_keys import __version__
from daemon_keys.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    KeysError,
    Terminated,
    describe_os_error,
    describe_unexpected,
)
from daemon_keys.text import say

if TYPE_CHECKING:
    import argparse

# A global option: its flags and add_argument's keywords.
Option = tuple[Sequence[str], dict[str, Any]]

DEBUG_OPTION: Option = (("--debug",), {
    "action": "store_true", "help": "show the traceback of an unexpected error"})


def add_global_options(parser: argparse.ArgumentParser,
                       subparsers: Sequence[argparse.ArgumentParser],
                       options: Sequence[Option]) -> None:
    """Accept each option before the subcommand or after it, and ``--version`` before.

    After the subcommand an option defaults to "not given" (``SUPPRESS``), so
    it never overwrites what was given before the subcommand.
    """
    import argparse

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    for flags, keywords in options:
        parser.add_argument(*flags, **keywords)
        for sub in subparsers:
            sub.add_argument(*flags, **{**keywords, "default": argparse.SUPPRESS})


def run_reporting(prog: str, run: Callable[[], int], debug: bool) -> int:
    """``run()``'s exit code; an error becomes one line on stderr and its exit code.

    A :class:`~.errors.KeysError` says its own line and carries its code; an
    ``OSError`` outside what the command handles is one line and 1; anything
    else (a bug, or an environment nobody foresaw) is one line and 1, or its
    traceback with ``--debug``.
    """
    import signal

    def terminate(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        return run()
    except KeysError as exc:
        say(f"{prog}: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        # Our reader went away ('... | head'): not a disk error, and nothing to say.
        # Point stdout at /dev/null so the interpreter's final flush stays quiet too.
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except OSError as exc:
        say(f"{prog}: {describe_os_error(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt as exc:
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        print(f"{prog}: {what}; whatever was written is whole, and what it had not "
              "finished is left pending for the next run", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
    except Exception as exc:
        if debug:
            raise
        say(f"{prog}: {describe_unexpected(exc)}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        signal.signal(signal.SIGTERM, previous)

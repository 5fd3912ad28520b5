"""Running a target's ``check`` and ``reload`` commands. Imports no certbot.

A command is a ``/bin/sh -c`` line from the config, with ``{lineage}``,
``{domains}`` and ``{path}`` substituted (each shell-quoted), run with the
target and lineage in its environment, stdin from /dev/null, and a time limit.
"""
from __future__ import annotations

import os
import shlex
from collections.abc import Iterable

COMMAND_TIMEOUT = 300.0


class CommandRun:
    """One command that ran: what, whether it succeeded, and its last line if not."""

    def __init__(self, command: str, ok: bool, detail: str, kind: str = "reload") -> None:
        self.command = command
        self.ok = ok
        self.detail = detail
        self.kind = kind  # reload | check


def expand(template: str, destination: str, lineage: str, names: Iterable[str]) -> str:
    """Substitute {lineage}, {domains} and {path}, each shell-quoted."""
    return (template.replace("{lineage}", shlex.quote(lineage))
            .replace("{domains}", shlex.quote(" ".join(names)))
            .replace("{path}", shlex.quote(destination)))


def environment(config_dir: str, target: str, destination: str, lineage: str,
                names: Iterable[str]) -> dict[str, str]:
    """The command's environment: ours, plus what certbot gives a deploy hook."""
    return dict(os.environ, CERTBOT_DEPLOY_TARGET=target, CERTBOT_DEPLOY_PATH=destination,
                RENEWED_LINEAGE=os.path.join(config_dir, "live", lineage),
                RENEWED_DOMAINS=" ".join(names))


def run_command(command: str, env: dict[str, str], kind: str = "reload") -> CommandRun:
    import subprocess  # only runs that changed something get here: keep it off start-up

    try:
        proc = subprocess.run(["/bin/sh", "-c", command], env=env, capture_output=True,
                              text=True, timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return CommandRun(command, False, f"timed out after {COMMAND_TIMEOUT:g} s", kind)
    if proc.returncode == 0:
        return CommandRun(command, True, "ok", kind)
    last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
    return CommandRun(command, False,
                      f"exit {proc.returncode}" + (f": {last[-1]}" if last else ""), kind)

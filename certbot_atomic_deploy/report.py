"""What a run did, and how it is said: the result types and every line the commands print.

Imports no certbot. One line per failure on stderr, each self-contained:
Certbot shows a failing hook only as "reported error code N" plus its stderr.
"""
from __future__ import annotations

import json
import sys

from certbot_atomic_deploy.commands import CommandRun
from certbot_atomic_deploy.config import Config, FileOutput
from daemon_keys.errors import EXIT_FAILED, EXIT_OK
from daemon_keys.text import say

PROG = "certbot-atomic-deploy"


class Outcome:
    """What a run did to one target. Mutable: a failed check turns it into rolled-back."""

    def __init__(self, target: str, lineage: str | None, status: str, detail: str,
                 version: int | None = None, serial: str | None = None,
                 exit_code: int = EXIT_FAILED) -> None:
        self.target = target
        self.lineage = lineage
        # published | unchanged | planned | failed | rolled-back | held (the DANE gate
        # keeps the old key; exit 1) | waiting (for a TTL, after publishing its record)
        self.status = status
        self.detail = detail
        self.version = version
        self.serial = serial
        self.exit_code = exit_code  # of a failure: 2 when a config file is to blame

    @property
    def failed(self) -> bool:
        return self.status in ("failed", "rolled-back", "held")


class RunResult:
    def __init__(self, outcomes: list[Outcome] | None = None,
                 commands: list[CommandRun] | None = None) -> None:
        self.outcomes = outcomes or []
        self.commands = commands or []
        self.errors: list[str] = []  # failures that belong to no single target
        self.notes: list[str] = []  # what a run did beside its targets (printed, not failures)
        self.warnings: list[str] = []  # done, but against a rule's first choice (on stderr)

    @property
    def ok(self) -> bool:
        return not self.errors and not any(o.failed for o in self.outcomes) and all(
            c.ok for c in self.commands if c.kind == "reload")

    @property
    def exit_code(self) -> int:
        """0, or the highest exit code among the failures (2 when a config is to blame)."""
        if self.ok:
            return EXIT_OK
        return max([EXIT_FAILED] + [o.exit_code for o in self.outcomes if o.failed])


def failure_lines(result: RunResult) -> list[str]:
    """One self-contained line per failure, for stderr."""
    lines = [o.detail if f"[{o.target}]" in o.detail else f"[{o.target}] {o.detail}"
             for o in result.outcomes if o.failed]  # named once: '[p] [p] ...' reads as two
    # A failed check is told in its target's line; a failed reload stands alone.
    lines += [f"reload '{c.command}' failed: {c.detail}" for c in result.commands
              if not c.ok and c.kind == "reload"]
    return lines + result.errors


def print_result(result: RunResult, as_json: bool) -> None:
    if as_json:
        print(json.dumps({
            "ok": result.ok,
            "targets": [vars(o) for o in result.outcomes],
            "commands": [vars(c) for c in result.commands],
            "notes": result.notes, "warnings": result.warnings}, indent=2))
    else:
        for o in result.outcomes:
            if not o.failed:
                say(f"[{o.target}] {o.status}: {o.detail}")
        for c in result.commands:
            if c.ok:
                say(f"{c.kind} ok: {c.command}")
        for note in result.notes:
            say(note)
    for line in result.warnings:
        say(f"{PROG}: WARNING: {line}", file=sys.stderr)
    for line in failure_lines(result):
        say(f"{PROG}: {line}", file=sys.stderr)


def print_status(rows: list[dict[str, object]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        if r["lineage"] is None:
            say(f"[{r['target']}] {r['destination']}: {r['detail']}")
            continue
        probed = f"; probe ok at {r['probe_at']}" if r.get("probe_ok") is True else ""
        say(f"[{r['target']}] {r['destination']}: lineage {r['lineage']} v{r['version']} "
              f"serial {r['serial']} expires {r['not_after']}; {r['detail']}{probed}")


def print_config(config: Config, chosen: dict[str, str]) -> None:
    """The resolved config; ``chosen``: each target's lineage as of now."""
    hosts = f" and {len(config.hosts)} host target(s)" if config.hosts else ""
    say(f"{config.path}: {len(config.targets)} target(s){hosts}, state in {config.state_dir}")
    for t in config.targets:
        which = (f"lineage {t.lineage}" if t.lineage
                 else f"the lineage covering {', '.join(t.domains)} (now: {chosen[t.name]})")
        preset = f" (preset {t.preset})" if t.preset else ""
        say(f"[{t.name}]{preset} {which} -> {t.describe()}; key files "
              f"{t.key.describe()}, others 0644; keep {t.keep}")
        if t.domains and t.lineage:
            say(f"    must cover: {', '.join(t.domains)}")
        if isinstance(t.output, FileOutput) and t.output.password_file:
            say(f"    keystore: PKCS#12, password from {t.output.password_file}, alias the "
                  "lineage name")
        if t.reader:
            say(f"    check: open the key as {t.reader} (the daemon's user)")
        if t.probe:
            say(f"    probe: {t.probe.describe()} must serve it after the reload")
        if t.dane:
            say(f"    dane: {t.dane.describe()}")
        for c in t.check:
            say(f"    check: {c}")
        for c in t.reload:
            say(f"    reload: {c}")
    for h in config.hosts:
        which = (f"lineage {h.lineage}" if h.lineage
                 else f"the lineage covering {', '.join(h.domains)} (now: {chosen[h.name]})")
        say(f"[{h.name}] {which} -> {h.describe()}")
        say(f"    ssh: identity {h.identity}, host keys pinned in {h.known_hosts}, connect "
              f"timeout {h.connect_timeout} s, {h.timeout:g} s an exchange")
        if h.probe:
            say(f"    probe: {h.probe.describe()} must serve it after the commit")
        if h.dane:
            say(f"    dane: {h.dane.describe()}")
    if config.hosts:
        say(f"push: {config.parallel} host(s) at once; commit = {config.commit}")

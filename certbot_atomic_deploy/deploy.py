"""A deploy run: select, compare, validate, publish, check, roll back, reload.

Imports no certbot; cryptography only through :mod:`.validate`, and only when
some target's bytes differ from what is on disk.

One run, under the state lock:
1. for each target, pick its lineage (``lineage =`` names, or ``domains =``
   globs all covered by the certificate's names); exactly one must match;
2. read the lineage (one consistent archive version) and build the target's
   bytes as text; if the destination already holds them with the right owner
   and mode, the target is unchanged: nothing is written or reloaded;
3. validate the material (key matches leaf, chain links, leaf valid now,
   domains covered); a lineage that fails is published to no target;
4. publish (atomic rename, or a new version directory and one link switch);
5. run the target's ``check`` commands; if one fails, put the target back as
   it was and leave its ``reload`` out;
6. run every distinct ``reload`` command of the targets that changed, once.
A failing target never stops the others; the run reports every failure.
"""
from __future__ import annotations

import datetime
import os
import shlex
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TypeVar

from certbot_atomic_deploy.config import Config, Target, read_password
from certbot_atomic_deploy.errors import DeployError, ValidationError
from certbot_atomic_deploy.pem import (
    KEYSTORE_FORMAT,
    Material,
    build,
    keystore_fingerprint,
    read_lineage,
)
from certbot_atomic_deploy.publish import (
    Undo,
    in_place,
    keystore_in_place,
    publish_directory,
    publish_file,
    rollback_directory,
    target_files,
)
from certbot_atomic_deploy.state import Record, StateDir, TargetState

if TYPE_CHECKING:
    from certbot_atomic_deploy.validate import CertInfo

COMMAND_TIMEOUT = 300.0
T = TypeVar("T")


class Outcome:
    """What a run did to one target. Mutable: a failed check turns it into rolled-back."""

    def __init__(self, target: str, lineage: str | None, status: str, detail: str,
                 version: int | None = None, serial: str | None = None) -> None:
        self.target = target
        self.lineage = lineage
        self.status = status  # published | unchanged | planned | failed | rolled-back
        self.detail = detail
        self.version = version
        self.serial = serial

    @property
    def failed(self) -> bool:
        return self.status in ("failed", "rolled-back")


class CommandRun:
    def __init__(self, command: str, ok: bool, detail: str, kind: str = "reload") -> None:
        self.command = command
        self.ok = ok
        self.detail = detail
        self.kind = kind  # reload | check


class RunResult:
    def __init__(self, outcomes: list[Outcome] | None = None,
                 commands: list[CommandRun] | None = None) -> None:
        self.outcomes = outcomes or []
        self.commands = commands or []
        self.errors: list[str] = []  # failures that belong to no single target

    @property
    def ok(self) -> bool:
        return not self.errors and not any(o.failed for o in self.outcomes) and all(
            c.ok for c in self.commands if c.kind == "reload")


def list_lineages(config_dir: str) -> list[str]:
    live = os.path.join(config_dir, "live")
    try:
        entries = os.listdir(live)
    except FileNotFoundError:
        return []
    return sorted(e for e in entries
                  if not e.startswith(".") and os.path.isdir(os.path.join(live, e)))


def expand(template: str, target: Target, lineage: str, names: Iterable[str]) -> str:
    """Substitute {lineage}, {domains} and {path}, each shell-quoted."""
    return (template.replace("{lineage}", shlex.quote(lineage))
            .replace("{domains}", shlex.quote(" ".join(names)))
            .replace("{path}", shlex.quote(target.destination)))


def run_command(command: str, env: dict[str, str]) -> CommandRun:
    import subprocess  # only runs that changed something get here: keep it off start-up

    try:
        proc = subprocess.run(["/bin/sh", "-c", command], env=env, capture_output=True,
                              text=True, timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return CommandRun(command, False, f"timed out after {COMMAND_TIMEOUT:g} s")
    if proc.returncode == 0:
        return CommandRun(command, True, "ok")
    last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
    return CommandRun(command, False,
                      f"exit {proc.returncode}" + (f": {last[-1]}" if last else ""))


class Deployer:
    def __init__(self, config: Config, config_dir: str,
                 now: datetime.datetime | None = None) -> None:
        self.config = config
        self.config_dir = config_dir
        self.state = StateDir(config.state_dir)
        self.now = now
        self._material: dict[str, Material | ValidationError] = {}
        self._checked: dict[str, CertInfo | ValidationError] = {}
        self._names: dict[str, tuple[str, ...]] = {}

    # -- reading

    def material(self, lineage: str) -> Material:
        """The lineage's consistent version, read once per run."""
        return _once(self._material, lineage, lambda: read_lineage(self.config_dir, lineage))

    def checked(self, lineage: str) -> CertInfo:
        """The lineage's material validated, once per run however many targets take it."""
        def check() -> CertInfo:
            from certbot_atomic_deploy.validate import validate
            return validate(self.material(lineage), self.now)
        return _once(self._checked, lineage, check)

    def names(self, lineage: str) -> tuple[str, ...]:
        if lineage not in self._names:
            from certbot_atomic_deploy.validate import leaf_info
            material = self.material(lineage)
            self._names[lineage] = leaf_info(material.leaf.text, material.sources["cert"]).names
        return self._names[lineage]

    def select(self, target: Target, wanted: set[str] | None) -> list[str]:
        """The lineages this target takes in this run (step 1)."""
        candidates = list(target.lineages) or list_lineages(self.config_dir)
        if wanted is not None:
            candidates = [c for c in candidates if c in wanted]
        if target.domains and not target.lineages:
            from certbot_atomic_deploy.validate import covers
            chosen = []
            for lineage in candidates:
                try:
                    names = self.names(lineage)
                except ValidationError:
                    continue  # reported if a target names it; a broken stranger is not ours
                if all(covers(names, pattern) for pattern in target.domains):
                    chosen.append(lineage)
            candidates = chosen
        return candidates

    def files(self, target: Target, material: Material) -> dict[str, bytes]:
        return {name: build(fmt, material) for name, fmt in target_files(target).items()}

    # -- a run

    def deploy(self, wanted: set[str] | None, dry_run: bool = False) -> RunResult:
        result = RunResult()
        changed: list[tuple[Target, str, Undo | None, Record, bytes | None]] = []
        for target in self.config.targets:
            try:
                chosen = self.select(target, wanted)
            except ValidationError as exc:
                result.outcomes.append(Outcome(target.name, None, "failed", str(exc)))
                continue
            if not chosen:
                # Only a domains target can choose nothing (a named lineage that does
                # not exist fails when it is read). In the hook, another lineage was
                # renewed: nothing to say. With --all, say that nothing covers it.
                if wanted is None:
                    result.outcomes.append(Outcome(
                        target.name, None, "failed",
                        f"{self.config.path}: [{target.name}] no lineage in "
                        f"{self.config_dir}/live covers {', '.join(target.domains)} (see "
                        "'certbot certificates')"))
                continue
            if len(chosen) > 1:
                result.outcomes.append(Outcome(
                    target.name, None, "failed",
                    f"{self.config.path}: [{target.name}] matches lineages "
                    f"{', '.join(chosen)}; one target takes one lineage (narrow lineage or "
                    "domains)"))
                continue
            entry = self._deploy_one(target, chosen[0], dry_run, result)
            if entry is not None:
                changed.append(entry)
        if dry_run:
            return result
        reloads: list[tuple[str, dict[str, str]]] = []
        for target, lineage, undo, record, data in changed:
            env = self._env(target, lineage, record.names)
            failed = self._run_checks(target, lineage, record, env, result)
            if failed is not None:
                self._undo(target, lineage, undo, failed, result)
                continue
            self._save(target, record, data)
            for template in target.reload:
                command = expand(template, target, lineage, record.names)
                if command not in [c for c, _ in reloads]:
                    reloads.append((command, env))
        self._flush(result)
        for command, env in reloads:
            result.commands.append(run_command(command, env))
        return result

    def _flush(self, result: RunResult) -> None:
        try:
            self.state.flush()
        except (DeployError, OSError) as exc:
            # Every target is wholly what it is; only status/rollback lack the record.
            result.errors.append(f"{self.state.file}: the targets are published, but "
                                 f"recording them failed: {_why(exc)}")

    def _save(self, target: Target, record: Record, data: bytes | None) -> None:
        state = self.state.load(target.name)
        if state.current is not None and state.current.seq != record.seq:
            state.history.append(state.current)
        state.current = record
        self.state.save(target.name, state, data, keep=target.keep)

    def _content(self, target: Target, material: Material
                 ) -> tuple[bool, dict[str, bytes] | None, bytes, str | None]:
        """Whether the target is current; its text files (None for a keystore), the
        keystore password and fingerprint (b"" and None for text)."""
        if target.format != KEYSTORE_FORMAT:
            files = self.files(target, material)
            return in_place(target, files), files, b"", None
        password = read_password(target)
        source = keystore_fingerprint(material, password)
        current = self.state.load(target.name).current
        return (current is not None and current.source == source
                and keystore_in_place(target, current.digest)), None, password, source

    def _deploy_one(self, target: Target, lineage: str, dry_run: bool, result: RunResult
                    ) -> tuple[Target, str, Undo | None, Record, bytes | None] | None:
        try:
            material = self.material(lineage)
            current, files, password, source = self._content(target, material)
            if current:
                if files is not None:
                    self._record_if_stale(target, lineage, material, files, dry_run)
                result.outcomes.append(Outcome(target.name, lineage, "unchanged",
                                               f"{target.destination}: already current",
                                               material.version))
                return None
            from certbot_atomic_deploy.validate import require_covered
            info = self.checked(lineage)
            require_covered(info, target.domains, material.sources["cert"])
            if dry_run:
                result.outcomes.append(Outcome(
                    target.name, lineage, "planned",
                    f"would publish {lineage} v{material.version} (serial {info.serial}) to "
                    f"{target.describe()} as {target.owner_name}:{target.group_name} "
                    f"{target.key_mode:04o}", material.version, info.serial))
                return None
            state = self.state.load(target.name)
            record = self._record(state, lineage, material, info)
            data: bytes | None = None  # a file target's bytes, kept for rollback
            undo: Undo | None
            if files is None:
                import hashlib

                from certbot_atomic_deploy.pkcs12 import keystore
                keystore_bytes = keystore(material, password)
                record = record._replace(source=source,
                                         digest=hashlib.sha256(keystore_bytes).hexdigest())
                data = keystore_bytes
                undo = publish_file(target, keystore_bytes)
            elif target.path is not None:
                data = next(iter(files.values()))
                undo = publish_file(target, data)
            else:
                undo = publish_directory(target, files)
        except (DeployError, OSError) as exc:
            result.outcomes.append(Outcome(target.name, lineage, "failed",
                                           _why(exc, target.destination)))
            return None
        result.outcomes.append(Outcome(
            target.name, lineage, "published",
            f"{target.destination}: {lineage} v{material.version} (serial {info.serial}, "
            f"expires {info.not_after:%Y-%m-%d})", material.version, info.serial))
        return target, lineage, undo, record, data

    def _record_if_stale(self, target: Target, lineage: str, material: Material,
                         files: dict[str, bytes], dry_run: bool) -> None:
        """Content in place but not recorded (a run died after its rename): record it."""
        state = self.state.load(target.name)
        current = state.current
        if dry_run or (current is not None and (current.lineage, current.version) == (
                lineage, material.version)):
            return
        record = self._record(state, lineage, material, self.checked(lineage))
        data = next(iter(files.values())) if target.path is not None else None
        self._save(target, record, data)

    def _record(self, state: TargetState, lineage: str, material: Material,
                info: CertInfo) -> Record:
        seq = max([r.seq for r in state.history] + ([state.current.seq] if state.current
                                                    else [0])) + 1
        return Record(seq=seq, lineage=lineage, version=material.version, serial=info.serial,
                      not_after=info.not_after.isoformat(), names=list(info.names),
                      published_at=datetime.datetime.now(datetime.timezone.utc).isoformat(
                          timespec="seconds"))

    def _env(self, target: Target, lineage: str, names: Iterable[str]) -> dict[str, str]:
        return dict(os.environ, CERTBOT_DEPLOY_TARGET=target.name,
                    CERTBOT_DEPLOY_PATH=target.destination,
                    RENEWED_LINEAGE=os.path.join(self.config_dir, "live", lineage),
                    RENEWED_DOMAINS=" ".join(names))

    def _run_checks(self, target: Target, lineage: str, record: Record, env: dict[str, str],
                    result: RunResult) -> CommandRun | None:
        for template in target.check:
            run = run_command(expand(template, target, lineage, record.names), env)
            run.kind = "check"
            result.commands.append(run)
            if not run.ok:
                return run
        return None

    def _undo(self, target: Target, lineage: str, undo: Undo | None, failed: CommandRun,
              result: RunResult) -> None:
        outcome = next(o for o in result.outcomes if o.target == target.name)
        try:
            if undo is not None:
                undo.action()
            outcome.status = "rolled-back"
            outcome.detail = (f"check '{failed.command}' failed ({failed.detail}); "
                              f"{undo.description if undo else 'nothing to undo'}; "
                              "reload skipped")
        except (DeployError, OSError) as exc:
            outcome.status = "failed"
            outcome.detail = (f"check '{failed.command}' failed ({failed.detail}) and the "
                              f"rollback failed too: {_why(exc, target.destination)}")

    # -- rollback command

    def rollback(self, name: str) -> RunResult:
        target = next((t for t in self.config.targets if t.name == name), None)
        if target is None:
            raise DeployError(f"{self.config.path}: no target [{name}] (targets: "
                              f"{', '.join(t.name for t in self.config.targets)})")
        state = self.state.load(name)
        if state.current is None or not state.history:
            raise DeployError(f"[{name}]: no earlier version is kept to roll back to "
                              "(keep = N keeps N)")
        previous = state.history.pop()
        if target.path is not None:
            publish_file(target, self.state.file_version(name, previous.seq))
        else:
            rollback_directory(target)
        state.current = previous
        self.state.save(name, state, keep=target.keep + 1)
        self.state.flush()
        result = RunResult([Outcome(name, previous.lineage, "published",
                                    f"{target.destination}: rolled back to {previous.lineage} "
                                    f"v{previous.version} (serial {previous.serial})",
                                    previous.version, previous.serial)])
        env = self._env(target, previous.lineage, previous.names)
        for template in target.reload:
            result.commands.append(run_command(
                expand(template, target, previous.lineage, previous.names), env))
        return result

    # -- status

    def status(self) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        for target in self.config.targets:
            current = self.state.load(target.name).current
            row: dict[str, object] = {"target": target.name,
                                      "destination": target.destination,
                                      "lineage": current.lineage if current else None,
                                      "serial": current.serial if current else None,
                                      "not_after": current.not_after if current else None,
                                      "version": current.version if current else None,
                                      "seq": current.seq if current else None}
            if current is None:
                row["in_sync"] = False
                row["detail"] = "never deployed"
            else:
                try:
                    material = self.material(current.lineage)
                    row["in_sync"] = self._content(target, material)[0]
                    row["lineage_version"] = material.version
                    row["detail"] = ("in sync" if row["in_sync"] else
                                     f"lineage is at v{material.version}; run deploy")
                except DeployError as exc:  # the lineage, or a keystore's password file
                    row["in_sync"] = False
                    row["detail"] = str(exc)
            rows.append(row)
        return rows


def _once(cache: dict[str, T | ValidationError], key: str, compute: Callable[[], T]) -> T:
    """``compute()`` once per key and run; a ValidationError is kept and raised again."""
    cached = cache.get(key)
    if cached is None:
        try:
            cached = compute()
        except ValidationError as exc:
            cached = exc
        cache[key] = cached
    if isinstance(cached, ValidationError):
        raise cached
    return cached


def _why(exc: BaseException, where: str = "") -> str:
    """A DeployError's own line, or an OSError said as one line about ``where``."""
    if isinstance(exc, OSError):
        action = f"{exc.filename}: " if exc.filename else ""
        return (f"{where}: {action}{exc.strerror or exc} (an I/O error: check the disk and "
                "run again; the target is wholly old or wholly new)")
    return str(exc)


def failure_lines(result: RunResult) -> list[str]:
    """One self-contained line per failure, for stderr."""
    lines = [f"[{o.target}] {o.detail}" for o in result.outcomes if o.failed]
    # A failed check is told in its target's line; a failed reload stands alone.
    lines += [f"reload '{c.command}' failed: {c.detail}" for c in result.commands
              if not c.ok and c.kind == "reload"]
    return lines + result.errors

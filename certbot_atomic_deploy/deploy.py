"""A deploy run, and the ``status`` and ``rollback`` commands that read its records.

Imports no certbot; cryptography only through :mod:`.validate` (and
:mod:`.pkcs12`), and only when some target's bytes differ from what is on disk.

Contract of :meth:`Deployer.deploy`, one run under the state lock (steps
marked ``# (N)`` in the body):

1. select: for each target, its lineage (``lineage =`` names it, or the one
   lineage among all whose certificate covers every ``domains =`` glob;
   several is a config error, whichever lineage the run is for);
2. compare: read the lineage (one consistent archive version, once per run)
   and make the target's payload; a destination that already holds it is
   unchanged: nothing is written, and nothing reloaded unless pending;
3. validate: key matches leaf, chain links, leaf valid now, domains covered,
   once per lineage; a lineage that fails is published to no target;
4. publish: stage and rename (owner and mode before the first key byte), or a
   new version directory and one link switch;
5. record: what each target now holds, and what it still waits for (its
   check, else its reload), in one atomic write of the state file, before
   any command runs: a run that dies later leaves that pending;
6. check: open the key as the target's ``reader``, then run its ``check``
   commands; a check an earlier run left pending is run here too;
7. roll back: a target whose check fails is put back as it was, record
   included, its reload left out, and with it every target this run published
   that shares a reload command with it (the same daemon: a key file and a
   certificate file must not be switched by halves; for a check an interrupted
   run left, every target still waiting for a reload it shares); then the state
   is written again;
8. reload: every distinct ``reload`` command of every target whose reload is
   pending (this run's, and any an earlier run could not finish), once,
   unless the run defers them to ``reload-pending``; a target's reload stops
   being pending when its commands succeed; then each target with a ``probe``
   that this run published or reloaded, with nothing left pending (or whose
   last probe failed), is asked what it serves (:mod:`.probe`);
9. push: every host target (``host =``) whose lineage the run is for, or whose
   push an earlier run left pending, in two phases over ssh
   (:mod:`.push`): stage the version on every such host, then commit it on
   each host that staged it (``commit = each``), or on none of a lineage's hosts
   unless all of them staged it (``commit = all``). Each host's receiver
   publishes, checks, rolls back and reloads by its own config. The push is
   recorded as pending before the first byte is sent, and stays pending for
   every later run (and ``reload-pending``) until the host answers that it
   committed this version.

A failing target never stops the others; the run reports every failure, and
exits with the highest exit code among them (:mod:`daemon_keys.errors`).
The cost of a run is linear in its targets: each lineage is read and
validated once, each destination directory listed at most once, the state
read once and written at most three times (after publishing, after the
checks, after the reloads); a run with nothing to do writes nothing.
"""
from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple, TypeVar

from certbot_atomic_deploy.commands import (
    CommandRun,
    environment,
    expand,
    open_as,
    run_command,
)
from certbot_atomic_deploy.config import Config, FileOutput, HostTarget, Target
from certbot_atomic_deploy.payload import Payload, payload_for
from certbot_atomic_deploy.pem import Material, list_lineages, read_certificates, read_lineage
from certbot_atomic_deploy.publish import (
    NewFile,
    Undo,
    publish_directory,
    publish_file,
    rollback_directory,
)
from certbot_atomic_deploy.report import Outcome, RunResult
from certbot_atomic_deploy.state import (
    PENDING_CHECK,
    PENDING_PUSH,
    PENDING_RELOAD,
    DaneState,
    LastRun,
    ProbeRun,
    Record,
    StateDir,
    TargetState,
)
from daemon_keys.atomicfile import open_for_writing
from daemon_keys.errors import (
    EXIT_FAILED,
    EXIT_OK,
    ConfigError,
    KeysError,
    UsageError,
    ValidationError,
    describe_os_error,
    exit_code,
)
from daemon_keys.fs import Leftovers

if TYPE_CHECKING:
    from certbot_atomic_deploy.push import Exchange, Session
    from certbot_atomic_deploy.validate import CertInfo

T = TypeVar("T")


class Published(NamedTuple):
    """A target this run has written, on its way to check, record and reload."""

    target: Target
    lineage: str
    outcome: Outcome
    undo: Undo
    record: Record
    data: bytes | None  # a file target's bytes, kept in the state for rollback
    before: TargetState  # its record before this run, put back if its check fails


class Deployer:
    def __init__(self, config: Config, config_dir: str,
                 now: datetime.datetime | None = None) -> None:
        self.config = config
        self.config_dir = config_dir
        self.state = StateDir(config.state_dir)
        self.now = now
        self.leftovers = Leftovers()
        self._lineages: list[str] | None = None
        self._material: dict[str, Material | ValidationError] = {}
        self._checked: dict[str, CertInfo | ValidationError] = {}
        self._names: dict[str, tuple[str, ...] | ValidationError] = {}

    # -- reading, each once per run

    def lineages(self) -> list[str]:
        if self._lineages is None:
            self._lineages = list_lineages(self.config_dir)
        return self._lineages

    def material(self, lineage: str) -> Material:
        """The lineage's consistent version."""
        return _once(self._material, lineage, lambda: read_lineage(self.config_dir, lineage))

    def checked(self, lineage: str) -> CertInfo:
        """The lineage's material validated, however many targets take it."""
        def check() -> CertInfo:
            from certbot_atomic_deploy.validate import validate
            return validate(self.material(lineage), self.now, self.config.issuers)
        return _once(self._checked, lineage, check)

    def served_chain(self, lineage: str, version: int) -> list[bytes]:
        """Archive version ``version`` of ``lineage`` (one a target serves, or served):
        its certificates in DER, leaf first, what TLSA records are computed from."""
        from certbot_atomic_deploy.tlsa import der_of
        return [der_of(b) for b in read_certificates(self.config_dir, lineage, version)]

    def names(self, lineage: str) -> tuple[str, ...]:
        def names() -> tuple[str, ...]:
            from certbot_atomic_deploy.validate import leaf_info
            material = self.material(lineage)
            return leaf_info(material.leaf.text, material.sources["cert"]).names
        return _once(self._names, lineage, names)

    def covering(self, target: Target | HostTarget, among: list[str]) -> list[str]:
        """The lineages of ``among`` whose certificate covers every ``domains`` glob."""
        from certbot_atomic_deploy.validate import covers
        chosen = []
        for lineage in among:
            try:
                names = self.names(lineage)
            except ValidationError:
                continue  # reported if a target names it; a broken stranger is not ours
            if all(covers(names, pattern) for pattern in target.domains):
                chosen.append(lineage)
        return chosen

    # -- a run

    def deploy(self, wanted: set[str] | None, dry_run: bool = False,
               reload: bool = True) -> RunResult:
        """A run (the contract above). ``reload=False`` leaves the reloads pending, for
        ``reload-pending`` (certbot's post-hook) to run once after every lineage."""
        result = RunResult()
        published: list[Published] = []
        for target in self.config.targets:
            lineage = self._select_one(target, wanted, result)  # (1)
            if lineage is not None:
                done = self._deploy_one(target, lineage, dry_run, result)  # (2)-(4)
                if done is not None:
                    published.append(done)
        if dry_run:
            self.push(wanted, dry_run, result)  # (9)
            return result
        for p in published:  # (5)
            self._save(p.target, p.record, p.data, _pending_after_publish(p.target))
        self._note_results(result)
        if any(_pending_after_publish(p.target) for p in published):
            self._flush(result)  # a check or reload a crash cuts short runs next time
        passed: list[Published] = []
        failed_checks: list[Failed] = []
        for p in published:
            failed = self._run_checks(p.target, p.record, result)  # (6)
            if failed is None:
                passed.append(p)
            else:
                self._undo(p, failed)  # (7)
                failed_checks.append(Failed(p.target.name, _reloads(p.target, p.record), failed))
        for p in passed:
            partner = _sharing_a_reload(_reloads(p.target, p.record), failed_checks)
            if partner is None:
                self._passed(p.target)
            else:  # (7) the same daemon: it must not reload onto half a switch
                self._undo(p, partner.run, partner.why)
        self._resume_checks({p.target.name for p in published}, result)  # (6), (7)
        self._note_results(result)
        self._flush(result)
        reloaded = self.run_reloads(result) if reload else set()  # (8)
        self._probe_local({p.target.name for p in passed} | reloaded, result,
                          every=wanted is None)  # (8)
        self.push(wanted, dry_run, result)  # (9)
        self._retire(result)  # (10)
        self._flush(result)
        return result

    def _resume_checks(self, done: set[str], result: RunResult) -> None:
        """(6, 7) for what an interrupted run left published with its check pending:
        run the check now; a target whose check fails goes back to its previous
        publish, and so does every target still waiting for a reload it shares
        (``done``: the targets this run has just checked)."""
        passed: list[tuple[Target, Record]] = []
        failed_checks: list[Failed] = []
        for target in self.config.targets:
            state = self.state.load(target.name)
            if target.name in done or state.current is None:
                continue
            if state.pending == PENDING_RELOAD:  # no check of its own: published, unreloaded
                passed.append((target, state.current))
            if state.pending != PENDING_CHECK:
                continue
            failed = self._run_checks(target, state.current, result)
            if failed is None:
                passed.append((target, state.current))
            else:
                failed_checks.append(Failed(target.name, _reloads(target, state.current),
                                            failed))
                left = f"{state.current.lineage} v{state.current.version}"
                self._put_back(target, state.current, f"check '{failed.command}' of the "
                               f"publish an interrupted run left ({left}) failed "
                               f"({failed.detail})", result)
        for target, current in passed:
            partner = _sharing_a_reload(_reloads(target, current), failed_checks)
            if partner is None:
                self._passed(target)
            else:  # the same daemon: it must not reload onto half a switch
                self._put_back(target, current, f"the publish an interrupted run left "
                               f"({current.lineage} v{current.version}) goes back with "
                               f"{partner.why}, whose check '{partner.run.command}' failed",
                               result)

    def _put_back(self, target: Target, current: Record, why: str,
                  result: RunResult) -> None:
        """(7) for a publish an interrupted run left: back to the one before it."""
        outcome = Outcome(target.name, current.lineage, "failed", why, current.version,
                          current.serial)
        result.outcomes.append(outcome)
        try:
            previous = self._restore_previous(target)
        except (KeysError, OSError) as exc:
            outcome.detail += f"; it stays published, check pending: {_why(exc)}"
        else:
            outcome.status = "rolled-back"
            outcome.detail += (f"; put back {previous.lineage} v{previous.version}; "
                               "reload skipped")

    def _note_results(self, result: RunResult) -> None:
        """Each target's outcome in this run, for status and the metrics file. An
        unchanged target after a success is not noted: a run with nothing to do
        writes nothing."""
        now = _now()
        for o in result.outcomes:
            state = self.state.load(o.target)
            if state.last is not None and (state.last.result == o.status or (
                    o.status == "unchanged" and state.last.result == "published")):
                continue
            state.last = LastRun(o.status, now)
            self.state.put(o.target, state)

    def _passed(self, target: Target) -> None:
        """Its checks passed: now its reload is what is pending (if it has one)."""
        state = self.state.load(target.name)
        pending = PENDING_RELOAD if target.reload else None
        if state.pending != pending:
            state.set_pending(pending, _now())
            self.state.put(target.name, state)

    def finish_pending(self) -> RunResult:
        """``reload-pending``: the switches the DANE gate holds (a run for their lineages),
        then the checks and the reloads earlier runs left pending."""
        held = self._held()
        result = self.deploy(held) if held else RunResult()
        self._resume_checks(set(), result)
        self._flush(result)
        self._probe_local(self.run_reloads(result), result)
        self.push(set(), False, result)  # only the pushes left pending
        self._retire(result)
        self._flush(result)
        return result

    # -- probes (proof of what is served)

    def _probe_local(self, done: set[str], result: RunResult, every: bool = False) -> None:
        """Probe each target with a ``probe`` that this run published or reloaded (with
        nothing left pending), and each whose last probe failed; ``every``: all of them
        (a run for every lineage asks every daemon what it serves)."""
        self._probe([t for t in self.config.targets if t.probe is not None], done, result,
                    every)

    def _probe(self, targets: list[Target] | list[HostTarget], done: set[str],
               result: RunResult, every: bool = False, quiet: bool = False) -> None:
        """Probe those of ``targets`` that are due (see :meth:`_probe_local`) and record
        what each serves. A host serving something else (not reloaded, or restored from
        an older backup) is pushed again: its push becomes pending. ``quiet``: failures
        are only recorded (the run goes on to push them again)."""
        due = []
        for target in targets:
            state = self.state.load(target.name)
            current = state.current
            if target.probe is None or current is None or state.pending is not None or not (
                    every or target.name in done or (
                        state.probe is not None and not state.probe.ok)):
                continue
            try:
                material = self.material(current.lineage)
            except KeysError:
                continue  # status says what is wrong with the lineage
            if material.version != current.version:
                continue  # the lineage has moved on: the next publish probes
            due.append((target.name, target.probe, material, current))
        if not due:
            return
        from concurrent.futures import ThreadPoolExecutor

        from certbot_atomic_deploy.probe import check

        with ThreadPoolExecutor(max_workers=min(self.config.parallel, len(due))) as pool:
            probed = list(pool.map(lambda d: check(d[1], d[2].leaf.text, d[3].serial,
                                                   d[3].names[0] if d[3].names else d[1].host),
                                   due))
        outcomes = {o.target: o for o in result.outcomes}
        hosts = {h.name for h in self.config.hosts}
        for (name, _, _, current), found in zip(due, probed):
            state = self.state.load(name)
            state.probe = ProbeRun(found.ok, found.detail, _now())
            if not found.ok and name in hosts:
                state.set_pending(PENDING_PUSH, _now())
            self.state.put(name, state)
            if found.ok or quiet:
                continue
            outcome = outcomes.get(name)
            if outcome is None:
                result.outcomes.append(Outcome(name, current.lineage, "failed",
                                               f"probe: {found.detail}", current.version,
                                               current.serial))
            else:
                outcome.status = "failed"
                outcome.detail += f"; but the probe: {found.detail}"
        self._flush(result)

    # -- hosts (9)

    def push(self, wanted: set[str] | None, dry_run: bool, result: RunResult) -> None:
        """(9) Stage on every host this run pushes to, then commit (the contract above)."""
        if not self.config.hosts:
            return
        from certbot_atomic_deploy import push

        if wanted is None and not dry_run:
            # A run for every lineage asks every host with a probe what it serves: one
            # serving something else (restored from an older backup) is pushed again now.
            self._probe(list(self.config.hosts), set(), result, every=True, quiet=True)
        plans = self._push_plans(wanted, dry_run, result)
        if not plans:
            if not dry_run:  # a failed probe of what a host holds is asked again
                self._probe(list(self.config.hosts), set(), result)
                self._note_results(result)
                self._flush(result)
            return
        for plan in plans:  # pending before the first byte leaves: a run that dies retries
            state = self.state.load(plan.target.name)
            state.set_pending(PENDING_PUSH, _now())
            self.state.put(plan.target.name, state)
        self._flush(result)
        sessions = [push.Session(p.target) for p in plans]  # one connection a host
        try:
            committed = self._stage_then_commit(plans, sessions)
        finally:
            push.close_all(sessions)
        self._probe(list(self.config.hosts), committed, result)
        self._note_results(result)
        self._flush(result)

    def _stage_then_commit(self, plans: list[PushPlan], sessions: list[Session]) -> set[str]:
        """(9) The two phases, each on every host at once (``parallel`` at a time): stage,
        then commit or abort by the policy. Returns the hosts that committed."""
        from certbot_atomic_deploy import push

        stage = {p.lineage: push.stage_request(p.material) for p in plans}  # once a lineage
        staged = push.ask_all([(s, stage[p.lineage]) for p, s in zip(plans, sessions)],
                              self.config.parallel)
        unstaged = {p.lineage for p, s in zip(plans, staged) if not s.ok}
        second: list[tuple[PushPlan, Session, str]] = []
        for plan, session, exchange in zip(plans, sessions, staged):
            if not exchange.ok:
                plan.outcome.detail = (f"{plan.outcome.detail}: not staged, {exchange.detail}; "
                                       f"it keeps what it held, {_RETRIED}")
            elif self.config.commit == "all" and plan.lineage in unstaged:
                plan.outcome.detail = (f"{plan.outcome.detail}: staged, not committed: commit "
                                       f"= all, and a host taking {plan.lineage} did not stage "
                                       f"it; it keeps what it held, {_RETRIED}")
                second.append((plan, session, "abort"))
            else:
                second.append((plan, session, "commit"))
        answers = push.ask_all(
            [(s, push.request(action, p.lineage, p.material.version)) for p, s, action in second],
            self.config.parallel)
        committed = set()
        for (plan, _, action), exchange in zip(second, answers):
            if action == "abort":
                continue  # frees the host's disk; the outcome says why it was not committed
            if not exchange.ok:
                plan.outcome.detail = (f"{plan.outcome.detail}: staged, commit failed: "
                                       f"{exchange.detail}; {_RETRIED}")
                continue
            state = self.state.load(plan.target.name)
            record = self._record(state, plan.lineage, plan.material, plan.info)
            self._save(plan.target, record, None, None)
            plan.outcome.status = "published"
            plan.outcome.detail = f"{plan.outcome.detail}: committed ({_receiver_said(exchange)})"
            committed.add(plan.target.name)
        return committed

    def _push_plans(self, wanted: set[str] | None, dry_run: bool,
                    result: RunResult) -> list[PushPlan]:
        """(9), first: each host target's lineage, compared and validated like (1)-(3)."""
        from certbot_atomic_deploy.validate import require_covered

        plans = []
        for target in self.config.hosts:
            state = self.state.load(target.name)
            retry = state.pending == PENDING_PUSH
            lineage = self._select_one(target, None if retry else wanted, result)
            if lineage is None:
                continue
            try:
                material = self.material(lineage)
                current = state.current
                if not retry and current is not None and (current.lineage, current.version) == (
                        lineage, material.version):
                    result.outcomes.append(Outcome(
                        target.name, lineage, "unchanged",
                        f"{target.destination}: holds {lineage} v{material.version} already",
                        material.version))
                    continue
                info = self.checked(lineage)
                require_covered(info, target.domains, material.sources["cert"])
                warning = self._gate(target, state, material, info, dry_run, result)  # (3)
            except KeysError as exc:
                result.outcomes.append(Outcome(target.name, lineage, "failed", str(exc),
                                               exit_code=exit_code(exc)))
                continue
            if warning is None:
                continue
            what = (f"{target.destination}: {lineage} v{material.version} (serial "
                    f"{info.serial}, expires {info.not_after:%Y-%m-%d}){warning}")
            if dry_run:
                result.outcomes.append(Outcome(
                    target.name, lineage, "planned",
                    f"would push {what} over ssh: stage, then commit (commit = "
                    f"{self.config.commit}); its receiver's config places it",
                    material.version, info.serial))
                continue
            outcome = Outcome(target.name, lineage, "failed", what, material.version,
                              info.serial)
            result.outcomes.append(outcome)
            plans.append(PushPlan(target, lineage, material, info, outcome))
        return plans

    def run_reloads(self, result: RunResult) -> set[str]:
        """(8) Every distinct reload command of every target whose reload is pending
        (this run's, and any an earlier run could not finish), once; a target stops
        being pending when all its commands succeeded. Returns those targets' names."""
        commands: dict[str, dict[str, str]] = {}
        waiting: dict[str, list[str]] = {}
        for target in self.config.targets:
            state = self.state.load(target.name)
            if state.pending != PENDING_RELOAD or state.current is None:
                continue
            current = state.current
            env = self._env(target, current.lineage, current.names)
            waiting[target.name] = _reloads(target, current)
            for command in waiting[target.name]:
                commands.setdefault(command, env)
        if not waiting:
            return set()
        ok = set()
        for command, env in commands.items():
            run = run_command(command, env, timeout=self._timeout(command, waiting))
            result.commands.append(run)
            if run.ok:
                ok.add(command)
        reloaded = {name for name, needed in waiting.items() if all(c in ok for c in needed)}
        for name in reloaded:
            state = self.state.load(name)
            state.set_pending(None, _now())
            self.state.put(name, state)
        self._flush(result)
        return reloaded

    def _timeout(self, command: str, waiting: dict[str, list[str]]) -> float:
        """A shared reload's time limit: the longest of the targets that run it."""
        return max(t.timeout for t in self.config.targets if command in waiting.get(t.name, ()))

    def _select_one(self, target: Target | HostTarget, wanted: set[str] | None,
                    result: RunResult) -> str | None:
        """Step (1) for one target: its lineage, or None (a failure is in ``result``).

        A ``domains`` target takes the one lineage covering its globs among *all*
        lineages, whichever were asked for: a run for one renewed lineage never
        picks a target's lineage differently than ``deploy --all`` would.
        """
        if target.lineage is not None:
            return target.lineage if wanted is None or target.lineage in wanted else None
        try:
            if wanted is not None and not self.covering(target, sorted(wanted)):
                return None  # another lineage was renewed: not this target's business
            return self.choose(target)
        except KeysError as exc:
            result.outcomes.append(Outcome(target.name, None, "failed", str(exc),
                                           exit_code=exit_code(exc)))
            return None

    def choose(self, target: Target | HostTarget) -> str:
        """The lineage a target takes: the named one, or the one covering its globs.
        A ``domains`` target that several lineages cover is a config error."""
        if target.lineage is not None:
            return target.lineage
        where = f"{self.config.path}: [{target.name}] domains"
        chosen = self.covering(target, self.lineages())
        if len(chosen) > 1:
            raise ConfigError(f"{where} {', '.join(target.domains)} match lineages "
                              f"{', '.join(chosen)}; a target takes one lineage (name it: "
                              "lineage = NAME, or narrow domains)")
        if not chosen:
            raise KeysError(f"{where}: no lineage in {self.config_dir}/live covers "
                            f"{', '.join(target.domains)} (see 'certbot certificates')")
        return chosen[0]

    def _deploy_one(self, target: Target, lineage: str, dry_run: bool,
                    result: RunResult) -> Published | None:
        """Steps (2) to (4) for one target."""
        try:
            material = self.material(lineage)
            payload = payload_for(target, material)
            state = self.state.load(target.name)
            if payload.in_place(state.current):  # (2)
                if not dry_run:
                    self._record_if_stale(target, lineage, material, payload)
                result.outcomes.append(Outcome(target.name, lineage, "unchanged",
                                               f"{target.destination}: already current",
                                               material.version))
                return None
            from certbot_atomic_deploy.validate import require_covered
            info = self.checked(lineage)  # (3)
            require_covered(info, target.domains, material.sources["cert"])
            warning = self._gate(target, state, material, info, dry_run, result)  # (3)
            if warning is None:
                return None
            if dry_run:
                self._check_publishable(target)
                result.outcomes.append(Outcome(
                    target.name, lineage, "planned",
                    f"would publish {lineage} v{material.version} (serial {info.serial}) to "
                    f"{target.describe()} as {_modes(target)}{_commands(target)}{warning}",
                    material.version, info.serial))
                return None
            files = payload.build()
            record = payload.stamp(self._record(state, lineage, material, info))
            undo = self._publish(target, files)  # (4)
        except (KeysError, OSError) as exc:
            result.outcomes.append(Outcome(target.name, lineage, "failed",
                                           _why(exc, target.destination), exit_code=exit_code(exc)))
            return None
        outcome = Outcome(
            target.name, lineage, "published",
            f"{target.destination}: {lineage} v{material.version} (serial {info.serial}, "
            f"expires {info.not_after:%Y-%m-%d}){warning}", material.version, info.serial)
        result.outcomes.append(outcome)
        return Published(target, lineage, outcome, undo, record, _file_bytes(target, files),
                         state.copy())

    def _gate(self, target: Target | HostTarget, state: TargetState, material: Material,
              info: CertInfo, dry_run: bool, result: RunResult) -> str | None:
        """(3) The DANE gate (:mod:`.dane`) for ``target``'s switch to ``material``, if it
        has ``tlsa =``: None when the switch is held (its outcome is in ``result``), else
        what to add to the outcome (a warning, or ""). What the gate decides is kept in
        the target's state (unless ``dry_run``)."""
        if target.dane is None:
            if state.dane is not None and not dry_run:  # tlsa = was removed: nothing held
                state.dane = None
                self.state.put(target.name, state)
            return ""
        from certbot_atomic_deploy.dane import Served, gate, parse_time
        from certbot_atomic_deploy.tlsa import der_of

        current, served = state.current, None
        if current is not None:
            try:
                old: list[bytes] | None = self.served_chain(current.lineage,
                                                             current.version)
            except KeysError:
                old = None  # pruned from the archive: its records are left alone
            served = Served(current.version, current.seq, parse_time(current.not_after), old)
        decision = gate(target.dane, material.version, [der_of(b) for b in material.chain],
                        state.dane, served, self._clock(), dry_run)
        if not dry_run:
            state.dane = decision.state
            self.state.put(target.name, state)
        if decision.go:
            if not decision.detail:
                return ""
            result.warnings.append(f"[{target.name}] {decision.detail}")
            return "; switched without a TLSA record vouching for it (see the warning)"
        result.outcomes.append(Outcome(
            target.name, material.lineage, decision.status,
            f"{decision.detail}; {target.destination} keeps "
            f"{_held_desc(state)}", material.version, info.serial,
            exit_code=EXIT_OK if decision.status == "waiting" else EXIT_FAILED))
        return None

    def _retire(self, result: RunResult) -> None:
        """(10) With RFC 2136: remove the records of the key each target switched away
        from, once a TTL has passed since the switch (:func:`.dane.retire`)."""
        from certbot_atomic_deploy.dane import DnsError, retire

        for target in self.config.everyone:
            state = self.state.load(target.name)
            if target.dane is None or state.dane is None or not state.dane.retire:
                continue
            try:
                kept, said = retire(target.dane, state.dane,
                                    state.current.seq if state.current else None,
                                    state.pending is None, self._clock())
            except DnsError as exc:
                result.errors.append(f"[{target.name}] {exc} (retiring the old key's TLSA "
                                     "records; every later run tries again)")
                continue
            if said:
                result.notes.append(f"[{target.name}] {said}")
                state.dane = kept
                self.state.put(target.name, state)

    def _clock(self) -> datetime.datetime:
        return self.now or datetime.datetime.now(datetime.timezone.utc)

    def _held(self) -> set[str]:
        """The lineages of the targets whose switch the DANE gate holds."""
        held = set()
        for target in self.config.everyone:
            if _held(target, self.state.load(target.name)) is not None:
                try:
                    held.add(self.choose(target))
                except KeysError:
                    continue  # the run for every lineage says what is wrong
        return held

    def _check_publishable(self, target: Target) -> None:
        """For a dry run: what step (4) would refuse about the destination directory
        (missing, unsafe), found by the same walk, writing nothing."""
        output = target.output
        if isinstance(output, FileOutput):
            os.close(open_for_writing(os.path.dirname(output.path), owner_uid=target.key.uid))
        elif os.path.lexists(output.directory):
            os.close(open_for_writing(output.directory, owner_uid=target.key.uid))
        else:  # created by the publish: its parent must be there, and safe
            os.close(open_for_writing(os.path.dirname(output.directory)))

    def _publish(self, target: Target, files: dict[str, NewFile]) -> Undo:
        output = target.output
        if isinstance(output, FileOutput):
            return publish_file(output.path, next(iter(files.values())), self.leftovers)
        return publish_directory(output.directory, files, owner_uid=target.key.uid,
                                 keep=target.keep, keep_seconds=target.keep_seconds,
                                 leftovers=self.leftovers)

    def _record_if_stale(self, target: Target, lineage: str, material: Material,
                         payload: Payload) -> None:
        """Content in place but not recorded (a run died after its rename): record it."""
        state = self.state.load(target.name)
        current = state.current
        if current is not None and (current.lineage, current.version) == (
                lineage, material.version):
            return
        record = payload.stamp(self._record(state, lineage, material, self.checked(lineage)))
        self._save(target, record, _file_bytes(target, payload.build()),
                   _pending_after_publish(target))

    def _record(self, state: TargetState, lineage: str, material: Material,
                info: CertInfo) -> Record:
        seq = max([r.seq for r in state.history] + ([state.current.seq] if state.current
                                                    else [0])) + 1
        return Record(seq=seq, lineage=lineage, version=material.version, serial=info.serial,
                      not_after=info.not_after.isoformat(), names=list(info.names),
                      published_at=_now())

    def _save(self, target: Target | HostTarget, record: Record, data: bytes | None,
              pending: str | None = None) -> None:
        state = self.state.load(target.name)
        if state.current is not None and state.current.seq != record.seq:
            state.history.append(state.current)
        state.current = record
        state.set_pending(pending, _now())
        # While its check is pending, one more old publish is kept: a failed check
        # puts the target back, and the record it goes back to must still be there.
        self.state.save(target.name, state, data,
                        keep=target.keep + (pending == PENDING_CHECK))

    def _flush(self, result: RunResult) -> None:
        try:
            self.state.flush()
        except (KeysError, OSError) as exc:
            # Every target is wholly what it is; only status/rollback lack the record.
            result.errors.append(f"{self.state.file}: the targets are published, but "
                                 f"recording them failed: {_why(exc)}")

    def _env(self, target: Target, lineage: str, names: list[str]) -> dict[str, str]:
        return environment(self.config_dir, target.name, target.destination, lineage, names)

    def _run_checks(self, target: Target, record: Record,
                    result: RunResult) -> CommandRun | None:
        if target.reader is not None:  # before the daemon's own check: it may not open it
            run = open_as(target.reader, _reader_path(target))
            result.commands.append(run)
            if not run.ok:
                return run
        env = self._env(target, record.lineage, record.names)
        for template in target.check:
            run = run_command(expand(template, target.destination, record.lineage,
                                     record.names), env, kind="check", timeout=target.timeout)
            result.commands.append(run)
            if not run.ok:
                return run
        return None

    def _undo(self, p: Published, failed: CommandRun, shared: str = "") -> None:
        """(7) Put a target whose check failed back as it was, and its record with it;
        or, ``shared`` saying why, one whose check passed but whose daemon another
        target's failed check is for."""
        why = (f"check '{failed.command}' failed ({failed.detail})" if not shared else
               f"put back with {shared}, whose check '{failed.command}' failed")
        try:
            p.undo.action()
        except (KeysError, OSError) as exc:
            p.outcome.status = "failed"
            p.outcome.detail = (f"{why} and the rollback failed too: "
                                f"{_why(exc, p.target.destination)}; its check stays pending")
            return
        self.state.put(p.target.name, p.before)
        p.outcome.status = "rolled-back"
        p.outcome.detail = f"{why}; {p.undo.description}; reload skipped"

    # -- rollback command

    def rollback(self, name: str) -> RunResult:
        target = next((t for t in self.config.targets if t.name == name), None)
        host = next((h for h in self.config.hosts if h.name == name), None)
        if host is not None:
            raise UsageError(f"{self.config.path}: [{name}] is a host target: roll back on "
                             f"{host.host}, where its receiver published it (certbot-atomic-"
                             "deploy --config RECEIVER.conf rollback TARGET)")
        if target is None:
            raise UsageError(f"{self.config.path}: no target [{name}] (targets: "
                             f"{', '.join(t.name for t in self.config.targets)})")
        previous = self._restore_previous(target)
        state = self.state.load(name)
        state.set_pending(PENDING_RELOAD if target.reload else None, _now())
        self.state.put(name, state)
        self.state.flush()
        result = RunResult([Outcome(name, previous.lineage, "published",
                                    f"{target.destination}: rolled back to {previous.lineage} "
                                    f"v{previous.version} (serial {previous.serial})",
                                    previous.version, previous.serial)])
        self.run_reloads(result)
        return result

    def _restore_previous(self, target: Target) -> Record:
        """Put the target's previous publish back on disk and make it the current record
        (in memory: the caller flushes)."""
        name = target.name
        state = self.state.load(name)
        if state.current is None or not state.history:
            raise KeysError(f"[{name}]: no earlier version is kept to roll back to "
                            "(keep = N keeps N)")
        previous = state.history[-1]
        output = target.output
        if isinstance(output, FileOutput):
            publish_file(output.path, NewFile(self.state.file_version(name, previous.seq),
                                              target.key.uid, target.key.gid,
                                              target.mode_of(output.format)), self.leftovers)
        else:
            rollback_directory(output.directory, target.key.uid)
        state.history.pop()
        state.current = previous
        state.set_pending(None, _now())
        self.state.save(name, state, keep=target.keep + 1)
        return previous

    # -- status

    def status(self) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        for target in self.config.targets:
            state = self.state.load(target.name)
            current = state.current
            row = _row(target.name, target.destination, state)
            if current is None:
                row["in_sync"] = False
                row["detail"] = "never deployed" + (
                    f" (last run: {state.last.result} at {state.last.at})" if state.last else "")
            else:
                try:
                    material = self.material(current.lineage)
                    row["in_sync"] = payload_for(target, material).in_place(current)
                    row["lineage_version"] = material.version
                    row["detail"] = (
                        "in sync" if row["in_sync"] else
                        f"lineage is at v{material.version}; run deploy"
                        if material.version != current.version else
                        "differs from its spec (content, owner, group, mode or an ACL "
                        "entry); run deploy to put it back")
                    held = _held(target, state)
                    if held is not None:
                        row["in_sync"] = False
                        row["detail"] = f"switch to {held}"
                    elif state.pending is not None:
                        row["in_sync"] = False
                        row["detail"] = (f"published, {state.pending} pending (since "
                                         f"{state.pending_since}; 'certbot-atomic-deploy "
                                         "reload-pending' runs it)")
                    elif row["in_sync"] and state.probe is not None and not state.probe.ok:
                        row["in_sync"] = False
                        row["detail"] = _probe_failed(state.probe)
                except KeysError as exc:  # the lineage, or a keystore's password file
                    row["in_sync"] = False
                    row["detail"] = str(exc)
            rows.append({**row, **_probe_fields(state), **_dane_fields(target, state)})
        rows += [self._host_status(h) for h in self.config.hosts]
        return rows

    def _host_status(self, target: HostTarget) -> dict[str, object]:
        """A host target's row: what the host last committed, and what is pending."""
        state = self.state.load(target.name)
        current = state.current
        row = {**_row(target.name, target.destination, state), "host": target.host,
               "in_sync": False, **_probe_fields(state), **_dane_fields(target, state)}
        try:
            lineage = self.choose(target)
            material = self.material(lineage)
        except KeysError as exc:
            row["detail"] = str(exc)
            return row
        row["lineage_version"] = material.version
        held = current is not None and (current.lineage, current.version) == (
            lineage, material.version)
        dane_held = _held(target, state)
        if dane_held is not None:
            row["detail"] = f"push of {lineage} {dane_held}"
        elif state.pending == PENDING_PUSH:
            probed = (f"; the last probe ({state.probe.at}): {state.probe.detail}"
                      if state.probe is not None and not state.probe.ok else "")
            row["detail"] = (f"push of {lineage} v{material.version} pending (since "
                             f"{state.pending_since}; every run tries again, or "
                             f"'certbot-atomic-deploy reload-pending'){probed}")
        elif current is None:
            row["detail"] = "never pushed"
        elif not held:
            row["detail"] = f"lineage is at v{material.version}; run deploy"
        elif state.probe is not None and not state.probe.ok:
            row["detail"] = _probe_failed(state.probe)
        else:
            row["in_sync"] = True
            row["detail"] = "in sync (committed on the host)"
        return row


def _reader_path(target: Target) -> str:
    """The file the daemon's user must open: the file, or the key in ``current/``."""
    output = target.output
    if isinstance(output, FileOutput):
        return output.path
    return os.path.join(output.directory, "current", "privkey.pem")


def _modes(target: Target) -> str:
    """Owner, group and mode of what a target's publish writes."""
    key = target.key
    if isinstance(target.output, FileOutput):
        return (f"{key.owner_name}:{key.group_name} "
                f"{target.mode_of(target.output.format):04o}")
    return f"{key.describe()} (key files; the others 0644)"


def _commands(target: Target) -> str:
    """The commands a publish of this target would run, for a dry run's line."""
    said = ([f"open it as {target.reader}"] if target.reader else []) + [
        f"{kind} '{c}'" for kind, commands in (("check", target.check),
                                               ("reload", target.reload))
        for c in commands]
    return f", then {', '.join(said)}" if said else ""


def _reloads(target: Target, record: Record) -> list[str]:
    """The target's reload commands as they run for ``record`` (placeholders filled in)."""
    return [expand(t, target.destination, record.lineage, record.names)
            for t in target.reload]


_RETRIED = "pending: every later run tries again"


def _row(name: str, destination: str, state: TargetState) -> dict[str, object]:
    """A status row's record fields: what the target holds, what is pending, the last run."""
    current = state.current
    return {"target": name, "destination": destination,
            "lineage": current.lineage if current else None,
            "serial": current.serial if current else None,
            "not_after": current.not_after if current else None,
            "version": current.version if current else None,
            "seq": current.seq if current else None,
            "published_at": current.published_at if current else None,
            "pending": state.pending, "pending_since": state.pending_since,
            "last_result": state.last.result if state.last else None,
            "last_run_at": state.last.at if state.last else None}


def _probe_fields(state: TargetState) -> dict[str, object]:
    probe = state.probe
    return {"probe_ok": probe.ok if probe else None, "probe_detail": probe.detail if probe
            else None, "probe_at": probe.at if probe else None}


def _held(target: Target | HostTarget, state: TargetState) -> str | None:
    """The switch the DANE gate holds for ``target`` ("vN held by DANE since ...: why"),
    or None."""
    dane = state.dane
    if target.dane is None or dane is None or dane.held is None:
        return None
    return f"v{dane.held} held by DANE since {dane.since}: {dane.detail}"


def _dane_fields(target: Target | HostTarget, state: TargetState) -> dict[str, object]:
    """A ``tlsa =`` target's status fields (none for a target without the gate)."""
    if target.dane is None:
        return {}
    dane = state.dane or DaneState()
    return {"tlsa_held": dane.held, "tlsa_held_since": dane.since,
            "tlsa_publish": list(dane.publish), "tlsa_switch_after": dane.switch_after,
            "tlsa_retire": list(dane.retire), "tlsa_retire_after": dane.retire_after}


def _held_desc(state: TargetState) -> str:
    current = state.current
    return (f"v{current.version} (serial {current.serial})" if current is not None
            else "what it serves (nothing published yet)")


def _probe_failed(probe: ProbeRun) -> str:
    return (f"published, but the last probe ({probe.at}) failed: {probe.detail}; every run "
            "probes it again")


class PushPlan(NamedTuple):
    """A host target this run pushes to, and its outcome (failed until committed)."""

    target: HostTarget
    lineage: str
    material: Material
    info: CertInfo
    outcome: Outcome


def _receiver_said(exchange: Exchange) -> str:
    """What a receiver's commit answer says it did, per target of its own."""
    targets = (exchange.answer or {}).get("targets")
    if not isinstance(targets, list) or not targets:
        return "the receiver published nothing"
    said = [f"[{t.get('target')}] {t.get('status')}" for t in targets if isinstance(t, dict)]
    return "there: " + ", ".join(said)


class Failed(NamedTuple):
    """A target whose check failed, with its reload commands and that check."""

    name: str
    reloads: list[str]
    run: CommandRun


class Partner(NamedTuple):
    why: str  # "[NAME] (same reload 'COMMAND')"
    run: CommandRun


def _sharing_a_reload(mine: list[str], failed: list[Failed]) -> Partner | None:
    """The first target among ``failed`` that reloads the same daemon (a reload command
    in common with ``mine``)."""
    for other in failed:
        shared = [c for c in other.reloads if c in mine]
        if shared:
            return Partner(f"[{other.name}] (same reload '{shared[0]}')", other.run)
    return None


def _pending_after_publish(target: Target) -> str | None:
    """What a just-published target waits for: its check, else its reload, else nothing."""
    if target.check or target.reader:
        return PENDING_CHECK
    return PENDING_RELOAD if target.reload else None


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


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


def _file_bytes(target: Target, files: dict[str, NewFile]) -> bytes | None:
    """What the state keeps of a publish for ``rollback``: a file target's bytes."""
    return next(iter(files.values())).data if isinstance(target.output, FileOutput) else None


def _why(exc: BaseException, where: str = "") -> str:
    """A KeysError's own line, or an OSError said as one line about ``where``."""
    if isinstance(exc, OSError):
        return f"{where}: {describe_os_error(exc)} (the target is wholly old or wholly new)"
    return str(exc)

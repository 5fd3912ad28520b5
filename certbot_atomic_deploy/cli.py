"""``certbot-atomic-deploy``: the deploy hook and its by-hand commands.

The only module of this package that reads ``os.environ`` for its own
settings. Exit codes, the same as ``certbot-perms``' (:mod:`daemon_keys.errors`):
0 done, 1 a target or a reload failed (the others were still done), 2 bad
config or usage, or the lock. Every failure is one line on stderr: Certbot
shows a failing hook only as "reported error code N" plus what the hook
printed there.

As a deploy hook (``--deploy-hook certbot-atomic-deploy``, or the script in
``renewal-hooks/deploy/``) it runs with no arguments and deploys the targets
of ``$RENEWED_LINEAGE``.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING

from certbot_atomic_deploy import runlog, spool
from certbot_atomic_deploy.config import (
    FileOutput,
    HostTarget,
    Target,
    load,
    read_password,
    state_dir_of,
    store_dir_of,
)
from certbot_atomic_deploy.deploy import Deployer
from certbot_atomic_deploy.report import (
    PROG,
    RunResult,
    failure_lines,
    print_config,
    print_result,
    print_status,
)
from certbot_atomic_deploy.state import StateDir
from daemon_keys.command import DEBUG_OPTION, add_global_options, run_reporting
from daemon_keys.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_STATUS,
    ConfigError,
    KeysError,
    UsageError,
    describe_os_error,
)
from daemon_keys.fs import require_dir
from daemon_keys.text import say

if TYPE_CHECKING:
    import argparse

    from certbot_atomic_deploy.receive import Request

DEFAULT_CONFIG_DIR = "/etc/letsencrypt"
CONFIG_NAME = "atomic-deploy.conf"
DEFAULT_LOCK_TIMEOUT = 120.0
MAN_SUMMARY = "validate a Certbot lineage and publish it atomically where each daemon wants it"
# The man page's sections after the options (scripts/manpages; man/certbot-atomic-deploy.1).
MAN_SECTIONS = (
    ("Examples", """certbot renew --deploy-hook certbot-atomic-deploy (or the script in
CONFIG_DIR/renewal-hooks/deploy/): deploys the renewed lineage's targets.

certbot-atomic-deploy check-config; certbot-atomic-deploy deploy --all --dry-run

certbot-atomic-deploy status --json (exit 1 when a target is not in sync)

certbot-atomic-deploy rollback postfix

certbot renew --deploy-hook 'certbot-atomic-deploy --defer-reloads' --post-hook
'certbot-atomic-deploy reload-pending': each distinct reload runs once per certbot run,
after every renewed lineage's checks.

An unprivileged certbot: its deploy hook is certbot-atomic-deploy notify (a marker in
/var/spool/certbot-atomic-deploy); certbot-atomic-deploy --config
/etc/certbot-atomic-deploy/atomic-deploy.conf units --output /etc/systemd/system writes
the units whose root service runs deploy --spool when a marker appears."""),
    ("Configuration", """CONFIG_DIR/atomic-deploy.conf holds one section per target:
lineage = NAME or domains = GLOB; path = FILE with format = key, cert, chain,
fullchain, postfix (key, then the full chain), haproxy (full chain, then the key) or
pkcs12 (with password_file), or directory = DIR (current -> vN/ holding every format);
owner, group, mode (of files that hold the key; at most 0640); check and reload
commands; timeout (seconds each command may run, default 300: then it and every process
it started are killed); reader (the daemon's user, who must be able to open the published
key before any check or reload); keep (older publishes kept for rollback, default 2);
keep_seconds (a versioned directory: a version is removed only this long after it
stopped being current, default 86400, so its readers have that long); metrics_file (in
[defaults] only: a node_exporter textfile rewritten by every run, with last_run_success
0 even when a run cannot read its config); issuers (in [defaults] only: a root-owned file of CA
certificates each lineage's chain must end at); preset = postfix, dovecot, exim,
haproxy, nginx, apache, ... A [defaults] section applies to every target.

The config, every directory above it and every file it names must be root's (or the
deploying user's) and writable by nobody else, counting POSIX ACL entries (a named
user: or group: entry with w); a password file, a TSIG key and the ssh identity must
also be readable by nobody else (the password file: but its group). A refusal names
the entry and the fix (setfacl -b FILE). No target may write over one of these files.

A host target (host = [USER@]HOST[:PORT] instead of path or directory) pushes its lineage
over ssh to that host's receiver (certbot-atomic-deploy receive, the forced command of
the sender's key there), which places it by its own config: stage on every host, then
commit (commit = each, or all: no host commits unless every host of the lineage staged;
[defaults] only, as is parallel = N, the hosts pushed to at once, default 8). identity
and known_hosts default to CONFIG_DIR/atomic-deploy.ssh/id_ed25519 and known_hosts (the
pinned host keys); connect_timeout (default 10 s). A host that fails stays pending: every
later run tries again.

probe = HOST:PORT[/tls|smtp|imap|pop3] on a target: after its reload (a host's commit)
the daemon must present the published certificate.

tlsa = _25._tcp.mx.example.org (several allowed) on a target or host target: it switches
to a new key only when each named TLSA RRset holds a record vouching for it (usages 3 and
2); else the switch is held, the record to publish is printed, and every later run asks
again. dns_server = ADDRESS[:PORT] (default: /etc/resolv.conf's); dnssec = require (only
answers with the AD bit); tlsa_grace_days (default 7) and tlsa_near_expiry = switch (the
default) or hold: what happens when the served certificate expires within that many days.
tlsa_update = TSIG-KEY-FILE, tlsa_update_server = ADDRESS[:PORT] and tlsa_zone = ZONE:
the new key's record is added over RFC 2136, the switch waits a TTL, the old key's records
are removed a TTL later."""),
    ("Exit status", EXIT_STATUS),
    ("Files", """CONFIG_DIR/atomic-deploy.conf: the targets.

CONFIG_DIR/atomic-deploy.state/: state.json (what each target holds, for status and
rollback, and the check, reload or push each still waits for: every later run, and
reload-pending, runs it until it succeeds), kept/, runs.json (the last good run's
metrics file; spool runs that failed in a row, for the backoff) and the run lock, mode
0700.

CONFIG_DIR/atomic-deploy.ssh/: the sender's ssh identity and pinned known_hosts."""),
    ("See also", "certbot(1), certbot-perms(1)"),
)


def build_parser() -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Validate a Certbot lineage's key and certificate and publish them where "
                    "each daemon wants them, atomically, then run each reload once. With no "
                    "command and $RENEWED_LINEAGE set (a certbot deploy hook), deploys that "
                    "lineage.",
        epilog="Target keys: preset, lineage, domains, path | directory, format (key, cert, "
               "chain, fullchain, key+fullchain alias postfix, fullchain+key alias haproxy, "
               "pkcs12 with password_file), owner, group, mode, check, reload, keep, "
               "keep_seconds; or host (push over ssh to that host's receiver). See the README.")
    sub = parser.add_subparsers(dest="command")
    deploy = sub.add_parser("deploy", help="publish lineages to their targets")
    which = deploy.add_mutually_exclusive_group()
    which.add_argument("--lineage", action="append", default=[], metavar="NAME",
                       help="deploy this lineage's targets (repeatable)")
    which.add_argument("--all", action="store_true", help="deploy every target")
    deploy.add_argument("--dry-run", action="store_true",
                        help="print the plan, change nothing")
    deploy.add_argument("--json", action="store_true", help="print the result as JSON")
    deploy.add_argument("--spool", metavar="DIR", default=None, help=(
        "take every marker 'notify' left in DIR, then deploy every target (the root side "
        "of an unprivileged certbot; implies --all)"))
    status = sub.add_parser("status", help="per target: lineage, serial, expiry, in sync")
    status_format = status.add_mutually_exclusive_group()
    status_format.add_argument("--json", action="store_true", help="print JSON")
    status_format.add_argument("--prometheus", action="store_true", help=(
        "print Prometheus metrics (what metrics_file in [defaults] holds)"))
    rollback = sub.add_parser("rollback", help="put a target back to its previous version")
    rollback.add_argument("target", help="the target's section name")
    check_config = sub.add_parser("check-config",
                                  help="validate the config and show each target")
    notify = sub.add_parser("notify", help=(
        "an unprivileged certbot's deploy hook: drop a marker for the renewed lineage into "
        "the spool, for the root side's 'deploy --spool'; reads no config, writes nothing "
        "else"))
    notify.add_argument("--spool", metavar="DIR", default=spool.DEFAULT_SPOOL,
                        help=f"the spool directory, owned by certbot's user (default "
                             f"{spool.DEFAULT_SPOOL})")
    notify.add_argument("--lineage", metavar="NAME", default=None,
                        help="the lineage (default: from $RENEWED_LINEAGE)")
    units = sub.add_parser("units", help=(
        "write the systemd units of the least-privilege setup for this config: certbot's "
        "drop-in (certbot as --user), this side's service, its path unit and timer"))
    units.add_argument("--spool", metavar="DIR", default=spool.DEFAULT_SPOOL,
                       help=f"the spool notify writes to (default {spool.DEFAULT_SPOOL})")
    units.add_argument("--user", default="certbot",
                       help="the user certbot runs as (default certbot)")
    units.add_argument("--output", metavar="DIR", default=None, help=(
        "write them into DIR (e.g. /etc/systemd/system) and create the state directory "
        "the service writes; default: print them"))
    receive = sub.add_parser("receive", help=(
        "read one push request (stage, commit, abort) on stdin and answer in JSON: the "
        "forced command of a sender's key in authorized_keys; --config is this host's own"))
    tlsa = sub.add_parser("tlsa", help=(
        "print the DANE TLSA records (3 1 1 for the key, 2 1 1 for each CA) of each "
        "lineage's newest version, of every version a target holds and of every switch "
        "the DANE gate holds, in zone-file form, under each tlsa = name of its targets"))
    tlsa.add_argument("--lineage", action="append", default=[], metavar="NAME",
                      help="this lineage (repeatable; default: every lineage a target takes)")
    tlsa.add_argument("--name", metavar="OWNER", default=None, help=(
        "the records' owner name, e.g. _25._tcp.mx.example.org (default: the tlsa = names "
        "of the lineage's targets, else _25._tcp. and the certificate's first name that is "
        "not a wildcard)"))
    tlsa.add_argument("--check", action="store_true", help=(
        "instead: ask DNS whether each tlsa = name still vouches for what each target "
        "serves now (exit 1 when one does not, or does not answer), e.g. from a monitor"))
    pending = sub.add_parser("reload-pending", help=(
        "run every pending check and reload once (certbot's --post-hook, with "
        "--defer-reloads on the deploy hook)"))
    for p in (parser, deploy):
        p.add_argument("--defer-reloads", action="store_true",
                       default=False if p is parser else argparse.SUPPRESS, help=(
                           "check now, leave the reloads pending for reload-pending "
                           "(certbot runs its post-hook once, after every lineage)"))
    add_global_options(parser, [deploy, status, rollback, check_config, pending, units,
                                receive, tlsa], [
        (("--config-dir",), {"default": None, "help": (
            f"certbot config dir (default: from $RENEWED_LINEAGE, else {DEFAULT_CONFIG_DIR})")}),
        (("--config",), {"default": None, "help": (
            f"deploy config file (default: CONFIG_DIR/{CONFIG_NAME})")}),
        (("--lock-timeout",), {"type": float, "default": DEFAULT_LOCK_TIMEOUT,
                               "metavar": "SECONDS", "help": (
            f"how long to wait for another run (default {DEFAULT_LOCK_TIMEOUT:g})")}),
        DEBUG_OPTION])
    return parser


def _config_dir(args: argparse.Namespace | SimpleNamespace) -> str:
    if args.config_dir:
        return str(args.config_dir)
    if args.config and os.path.isdir(store_dir_of(args.config)):
        return store_dir_of(args.config)  # a receiver's: what it was sent is its lineages
    renewed = os.environ.get("RENEWED_LINEAGE")
    if renewed:
        return os.path.dirname(os.path.dirname(os.path.normpath(renewed)))
    return DEFAULT_CONFIG_DIR


def run(args: argparse.Namespace | SimpleNamespace) -> int:
    if args.command == "notify":  # before any config: the unprivileged side reads none
        lineage = args.lineage or os.path.basename(os.path.normpath(
            os.environ.get("RENEWED_LINEAGE", "")))
        if not lineage:
            raise UsageError("notify: no --lineage given and $RENEWED_LINEAGE is not set "
                             "(use it as certbot's --deploy-hook)")
        say(f"notified: {spool.notify(args.spool, lineage)}")
        return EXIT_OK
    if args.command is None and not os.environ.get("RENEWED_LINEAGE"):
        raise UsageError("no command given and $RENEWED_LINEAGE is not set (run "
                         "'deploy --all', or use this as certbot's --deploy-hook)")
    if args.command == "receive":
        if not args.config:
            raise UsageError("receive: give this host's receiver config: --config FILE")
        config_dir = store_dir_of(args.config)  # what it is sent: no target may go there
    else:
        config_dir = _config_dir(args)
    config_path = args.config or os.path.join(config_dir, CONFIG_NAME)
    if args.command not in WRITING:
        return _run(args, config_dir, config_path)
    # A run that writes state: its end is recorded even when it cannot read its config
    # (the metrics file says so; a spool run started again by the path unit backs off).
    spool_run = args.command == "deploy" and args.spool is not None
    if spool_run:
        before = runlog.read(StateDir(state_dir_of(config_path)))
        wait = runlog.backoff_seconds(before, time.time())
        if wait > 0:
            say(f"{PROG}: WARNING: the last {before.failures} spool run(s) failed or left "
                f"the spool unemptied; waiting {wait:.0f} s before this one",
                file=sys.stderr)
            time.sleep(wait)
    try:
        code = _run(args, config_dir, config_path)
    except KeysError:
        runs = runlog.ended(StateDir(state_dir_of(config_path)),
                            settled=False if spool_run else None, known=False)
        if runs.metrics_file:
            runlog.mark_failed_metrics(runs.metrics_file, runs.ended_at)
        raise
    return code


# The commands that write state (and the metrics file): the certbot hook (None) too.
WRITING = (None, "deploy", "rollback", "reload-pending")


def _run(args: argparse.Namespace | SimpleNamespace, config_dir: str, config_path: str
         ) -> int:
    try:
        config = load(config_path, config_dir)
    except KeysError as exc:
        if args.command == "receive":  # the sender reads one JSON line whatever happens
            from certbot_atomic_deploy.receive import answer
            print(answer(False, error=str(exc)), flush=True)
        raise
    command = args.command
    deployer = Deployer(config, config_dir)
    if command == "receive":
        return _receive(args, deployer)
    if command == "check-config":
        chosen = {}
        for t in config.targets:  # say now what a deploy would refuse
            if isinstance(t.output, FileOutput) and t.output.password_file:
                read_password(t.name, t.output.password_file)
        for each in config.everyone:  # and each TSIG key (a deploy reads it at the gate)
            if each.dane is not None and each.dane.update is not None:
                from certbot_atomic_deploy.dane import read_tsig
                read_tsig(each.dane.update.key_file)
        for each in config.everyone:
            try:
                chosen[each.name] = deployer.choose(each)
            except ConfigError:
                raise
            except KeysError as exc:  # no such lineage yet: the config itself is fine
                chosen[each.name] = f"none yet ({exc})"
        print_config(config, chosen)
        return EXIT_OK
    if command == "units":
        return _units(args, deployer, config_dir)
    if command == "tlsa":
        return _tlsa(args, deployer)
    if command == "status":
        rows = deployer.status()
        if args.prometheus:
            from certbot_atomic_deploy import metrics
            print(metrics.render(rows), end="")
        else:
            print_status(rows, args.json)
        return EXIT_OK if all(r["in_sync"] for r in rows) else EXIT_FAILED
    if command == "rollback":
        with deployer.state.lock(args.lock_timeout):
            result = deployer.rollback(args.target)
            _write_metrics(deployer, result)
        print_result(result, False)
        return result.exit_code
    if command == "reload-pending":
        with deployer.state.lock(args.lock_timeout):
            result = deployer.finish_pending()
            _write_metrics(deployer, result)
        if not result.commands and not result.outcomes:
            print("nothing pending")
        print_result(result, False)
        return result.exit_code
    if command is None:  # certbot deploy hook ($RENEWED_LINEAGE checked above)
        renewed = os.environ["RENEWED_LINEAGE"]
        wanted: set[str] | None = {os.path.basename(os.path.normpath(renewed))}
        dry_run, as_json = False, False
    else:
        if args.spool is not None and args.lineage:
            raise UsageError("deploy: --spool deploys every target; drop --lineage")
        if not args.all and not args.lineage and args.spool is None:
            raise UsageError("deploy: say which: --lineage NAME (repeatable) or --all")
        wanted = None if args.all or args.spool is not None else set(args.lineage)
        for name in sorted(wanted or ()):
            if not name or "/" in name or name.startswith("."):
                raise UsageError(f"deploy --lineage '{name}': not a lineage name (the "
                                 "name under live/, e.g. --lineage mail.example.org)")
            require_dir(os.path.join(config_dir, "live", name),
                        f"deploy --lineage {name}: no such lineage in {config_dir}/live "
                        "(see 'certbot certificates')")
        dry_run, as_json = args.dry_run, args.json
    if dry_run:  # reads only: no lock, nothing created
        result = deployer.deploy(wanted, dry_run=True)
    else:
        skipped: list[str] = []
        with deployer.state.lock(args.lock_timeout):
            if command is not None and args.spool is not None:
                # Before the run: a marker dropped while it runs starts the next one.
                taken, skipped = spool.take(args.spool)
                if not as_json:
                    say(f"spool {args.spool}: took {len(taken)} marker(s)"
                        f"{': ' + ', '.join(taken) if taken else ''}")
            result = deployer.deploy(wanted, reload=not args.defer_reloads)
            result.warnings[:0] = skipped
            spool_run = command is not None and args.spool is not None
            _write_metrics(deployer, result, settled=not skipped if spool_run else None)
    if command is not None and not result.outcomes and not as_json:
        say(f"nothing to deploy: no target in {config.path} takes "
              f"{', '.join(sorted(wanted or ()))}")
    print_result(result, as_json)
    return result.exit_code


def _receive(args: argparse.Namespace | SimpleNamespace, deployer: Deployer) -> int:
    """One session: a request from stdin, one JSON line on stdout (and a failure's line
    on stderr); after a stage that succeeded, its commit or abort may follow."""
    from certbot_atomic_deploy import receive

    staged = None
    while True:
        try:
            request = receive.read_request(sys.stdin.buffer, staged)
            if request is None:
                return EXIT_OK
            code = _receive_one(args, deployer, request)
        except KeysError as exc:
            print(receive.answer(False, error=str(exc)), flush=True)
            raise
        if request.action != "stage" or code != EXIT_OK:
            return code
        staged = request


def _receive_one(args: argparse.Namespace | SimpleNamespace, deployer: Deployer,
                 request: Request) -> int:
    from certbot_atomic_deploy import receive

    config, store = deployer.config, deployer.config_dir
    takers = [t for t in config.targets if t.lineage == request.lineage]
    if not takers:
        raise UsageError(f"receive: no target in {config.path} takes lineage "
                         f"{request.lineage}; refused")
    where = f"{request.lineage} v{request.version}"
    if request.action == "stage":
        from certbot_atomic_deploy.validate import leaf_info, require_covered, validate
        material = receive.material_of(request)
        info = validate(material, None, config.issuers)
        for target in takers:
            require_covered(info, target.domains, material.sources["cert"])
        live_pem = receive.live_leaf(store, request.lineage)
        if live_pem is not None and not request.rollback:
            held = leaf_info(live_pem, f"{store}/live/{request.lineage}/cert.pem")
            # Serials are random (an ACME CA's are): only notBefore orders certificates.
            if info.not_before < held.not_before:
                raise UsageError(
                    f"receive: {where}: its certificate (serial {info.serial}, issued "
                    f"{info.not_before:%Y-%m-%d %H:%M}) is older than the live one (serial "
                    f"{held.serial}, issued {held.not_before:%Y-%m-%d %H:%M}); a downgrade "
                    "is refused (to go back, roll back on this host: certbot-atomic-deploy "
                    f"--config {config.path} rollback TARGET)")
        with deployer.state.lock(args.lock_timeout):
            live = receive.stage(store, material)
        print(receive.answer(True, action="stage", lineage=request.lineage,
                             version=request.version, serial=info.serial, live=live),
              flush=True)
        return EXIT_OK
    with deployer.state.lock(args.lock_timeout):
        if request.action == "abort":
            removed = receive.abort(store, request.lineage, request.version)
            print(receive.answer(True, action="abort", lineage=request.lineage,
                                 version=request.version, removed=removed), flush=True)
            return EXIT_OK
        receive.commit(store, request.lineage, request.version)
        result = deployer.deploy({request.lineage})
        _write_metrics(deployer, result)
    print(receive.answer(result.ok, action="commit", lineage=request.lineage,
                         version=request.version, targets=[vars(o) for o in result.outcomes],
                         commands=[vars(c) for c in result.commands]), flush=True)
    for line in failure_lines(result):
        say(f"{PROG}: {where}: {line}", file=sys.stderr)
    return result.exit_code


def _tlsa(args: argparse.Namespace | SimpleNamespace, deployer: Deployer) -> int:
    """The TLSA records of each lineage's newest version, and of each version a target
    holds (what is served now), for an operator to publish before a key switch."""
    from certbot_atomic_deploy.tlsa import der_of, records_for

    if args.check:
        return _tlsa_check(args, deployer)
    everyone = deployer.config.everyone
    lineages = list(args.lineage)
    if not lineages:
        for target in everyone:
            try:
                chosen = deployer.choose(target)
            except KeysError:
                continue  # no lineage covers it yet
            if chosen not in lineages:
                lineages.append(chosen)
    if not lineages:
        raise UsageError(f"tlsa: no target in {deployer.config.path} takes a lineage yet; "
                         "give --lineage NAME")
    for lineage in lineages:
        newest = deployer.material(lineage)
        holders: dict[int, list[str]] = {}
        held: dict[int, list[str]] = {}
        owners: list[str] = []
        for target in everyone:
            state = deployer.state.load(target.name)
            if state.current is not None and state.current.lineage == lineage:
                holders.setdefault(state.current.version, []).append(target.name)
            if target.dane is not None and _takes(deployer, target, lineage):
                owners += [n for n in target.dane.names if n not in owners]
                if state.dane is not None and state.dane.held is not None:
                    held.setdefault(state.dane.held, []).append(target.name)
        if args.name:
            owners = [args.name]
        for version in sorted({newest.version, *holders, *held}, reverse=True):
            chain = ([der_of(b) for b in newest.chain] if version == newest.version
                     else deployer.served_chain(lineage, version))
            said = ([f"held by {', '.join(f'[{n}]' for n in holders[version])}"]
                    if version in holders else [])
            if version == newest.version:
                said.insert(0, "the lineage's newest")
            if version in held:
                said.append(f"the switch of {', '.join(f'[{n}]' for n in held[version])} "
                            "to it waits for one of these records")
            say(f"; {lineage} v{version}: {'; '.join(said) or 'held by no target'}")
            for owner in owners or [_tlsa_owner(deployer, lineage)]:
                for record in records_for(chain):
                    say(f"{owner.rstrip('.')}. IN TLSA {record.text()}")
    return EXIT_OK


def _tlsa_check(args: argparse.Namespace | SimpleNamespace, deployer: Deployer) -> int:
    """``tlsa --check``: do the published records vouch for what is served now?"""
    from certbot_atomic_deploy.dane import check_served

    if args.name:
        raise UsageError("tlsa --check asks the tlsa = names of the targets; --name is "
                         "for printing records, drop it")
    gated = [(t, t.dane) for t in deployer.config.everyone if t.dane is not None]
    if not gated:
        raise UsageError(f"tlsa --check: no target in {deployer.config.path} has tlsa =; "
                         "nothing to check")
    if args.lineage:
        gated = [(t, dane) for t, dane in gated
                 if any(_takes(deployer, t, lineage) for lineage in args.lineage)]
        if not gated:  # a monitor must not stay green on a typo
            raise UsageError(f"tlsa --check: no tlsa = target in {deployer.config.path} "
                             f"takes {', '.join(args.lineage)}")
    code = EXIT_OK
    for target, dane in gated:
        current = deployer.state.load(target.name).current
        if current is None:
            say(f"[{target.name}] nothing published yet: nothing to check")
            continue
        try:
            said = check_served(dane, current.version,
                                deployer.served_chain(current.lineage, current.version))
        except KeysError as exc:  # the served version pruned from the archive
            said = [(False, f"the served {current.lineage} v{current.version}: {exc}")]
        for ok, line in said:
            if ok:
                say(f"[{target.name}] {line}")
            else:
                say(f"{PROG}: [{target.name}] {line}", file=sys.stderr)
                code = EXIT_FAILED
    return code


def _takes(deployer: Deployer, target: Target | HostTarget, lineage: str) -> bool:
    try:
        return deployer.choose(target) == lineage
    except KeysError:
        return False


def _tlsa_owner(deployer: Deployer, lineage: str) -> str:
    """_25._tcp. and the lineage's first name that is not a wildcard."""
    names = [n for n in deployer.names(lineage) if not n.startswith("*.")]
    return f"_25._tcp.{names[0] if names else lineage}"


def _units(args: argparse.Namespace | SimpleNamespace, deployer: Deployer,
           config_dir: str) -> int:
    from certbot_atomic_deploy.units import all_units, write_units
    from daemon_keys.keyspec import resolve_user

    # A name that exists, or a numeric uid (systemd takes User=994), as chown(1) does.
    if resolve_user(args.user, "units --user")[0] == 0:
        raise UsageError(f"units --user {args.user}: that is root; certbot's side must run "
                         "as a user of its own (e.g. --user certbot)")
    program = os.path.abspath(sys.argv[0])
    if os.path.basename(program) != PROG:  # python -m certbot_atomic_deploy
        program = PROG
    units = all_units(deployer.config, os.path.abspath(config_dir), args.spool, program,
                      args.user)
    if args.output is None:
        for name, text in units.items():
            print(f"# --- {name}\n{text}")
        return EXIT_OK
    deployer.state.create()
    for path in write_units(args.output, units):
        print(f"wrote {path}")
    print("then: systemctl daemon-reload; systemctl enable --now certbot-atomic-deploy.path "
          "certbot-atomic-deploy.timer")
    return EXIT_OK


def _write_metrics(deployer: Deployer, result: RunResult, settled: bool | None = None
                   ) -> None:
    """After a run, under its lock: record its end (:mod:`.runlog`) and rewrite the
    metrics file (if the config names one) with it. ``settled``: for a spool run,
    whether it took everything there (else the path unit would start it again)."""
    path = deployer.config.metrics_file
    runs = runlog.ended(deployer.state, settled=settled, metrics_file=path)
    if path is None:
        return
    from certbot_atomic_deploy import metrics  # only then: off the hook's start-up path
    try:
        metrics.write(path, metrics.render(deployer.status()) + "\n".join(
            runlog.last_run_lines(runs.ended_at, result.ok)) + "\n")
    except (KeysError, OSError) as exc:
        why = str(exc) if isinstance(exc, KeysError) else describe_os_error(exc, path)
        result.errors.append(f"metrics_file {path}: not written: {why}")


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    args: argparse.Namespace | SimpleNamespace
    if words:
        args = build_parser().parse_args(words)
    else:
        # The deploy hook's own path (no arguments): argparse is not even imported,
        # because this runs on every renewal and its start-up time is what users feel.
        args = SimpleNamespace(command=None, config_dir=None, config=None, debug=False,
                               lock_timeout=DEFAULT_LOCK_TIMEOUT, defer_reloads=False)
    return run_reporting(PROG, lambda: run(args), args.debug)


if __name__ == "__main__":
    sys.exit(main())

"""``certbot-atomic-deploy``: the deploy hook and its by-hand commands.

The only module of this package that reads ``os.environ`` for its own
settings and turns errors into exit codes: 0 done, 1 a target or a reload
failed (the others were still done), 2 bad config or usage, or the lock.
Every failure is one line on stderr: Certbot shows a failing hook only as
"reported error code N" plus what the hook printed there.

As a deploy hook (``--deploy-hook certbot-atomic-deploy``, or the script in
``renewal-hooks/deploy/``) it runs with no arguments and deploys the targets
of ``$RENEWED_LINEAGE``.
"""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING

from certbot_atomic_deploy.config import Config, load, read_password
from certbot_atomic_deploy.deploy import Deployer, RunResult, failure_lines
from certbot_atomic_deploy.errors import ConfigError, DeployError, LockError
from certbot_perms.errors import describe_unexpected

if TYPE_CHECKING:
    import argparse

DEFAULT_CONFIG_DIR = "/etc/letsencrypt"
CONFIG_NAME = "atomic-deploy.conf"
DEFAULT_LOCK_TIMEOUT = 120.0
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(
        prog="certbot-atomic-deploy",
        description="Validate a Certbot lineage's key and certificate and publish them where "
                    "each daemon wants them, atomically, then run each reload once. With no "
                    "command and $RENEWED_LINEAGE set (a certbot deploy hook), deploys that "
                    "lineage.",
        epilog="Target keys: preset, lineage, domains, path | directory, format (key, cert, "
               "chain, fullchain, key+fullchain alias postfix, fullchain+key alias haproxy, "
               "pkcs12 with password_file), owner, group, mode, check, reload, keep. See the "
               "README.")
    parser.add_argument("--config-dir", default=None,
                        help=f"certbot config dir (default: from $RENEWED_LINEAGE, else "
                             f"{DEFAULT_CONFIG_DIR})")
    parser.add_argument("--config", default=None,
                        help=f"deploy config file (default: CONFIG_DIR/{CONFIG_NAME})")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an unexpected error")
    parser.add_argument("--lock-timeout", type=float, default=DEFAULT_LOCK_TIMEOUT,
                        metavar="SECONDS",
                        help=f"how long to wait for another run (default {DEFAULT_LOCK_TIMEOUT:g})")
    sub = parser.add_subparsers(dest="command")
    deploy = sub.add_parser("deploy", help="publish lineages to their targets")
    which = deploy.add_mutually_exclusive_group()
    which.add_argument("--lineage", action="append", default=[], metavar="NAME",
                       help="deploy this lineage's targets (repeatable)")
    which.add_argument("--all", action="store_true", help="deploy every target")
    deploy.add_argument("--dry-run", action="store_true",
                        help="print the plan, change nothing")
    deploy.add_argument("--json", action="store_true", help="print the result as JSON")
    status = sub.add_parser("status", help="per target: lineage, serial, expiry, in sync")
    status.add_argument("--json", action="store_true", help="print JSON")
    rollback = sub.add_parser("rollback", help="put a target back to its previous version")
    rollback.add_argument("target", help="the target's section name")
    sub.add_parser("check-config", help="validate the config and show each target")
    return parser


def _config_dir(args: argparse.Namespace | SimpleNamespace) -> str:
    if args.config_dir:
        return str(args.config_dir)
    renewed = os.environ.get("RENEWED_LINEAGE")
    if renewed:
        return os.path.dirname(os.path.dirname(os.path.normpath(renewed)))
    return DEFAULT_CONFIG_DIR


def _print_result(result: RunResult, as_json: bool) -> None:
    if as_json:
        print(json.dumps({
            "ok": result.ok,
            "targets": [vars(o) for o in result.outcomes],
            "commands": [vars(c) for c in result.commands]}, indent=2))
    else:
        for o in result.outcomes:
            if not o.failed:
                print(f"[{o.target}] {o.status}: {o.detail}")
        for c in result.commands:
            if c.ok:
                print(f"{c.kind} ok: {c.command}")
    for line in failure_lines(result):
        print(f"certbot-atomic-deploy: {line}", file=sys.stderr)


def _show_config(config: Config) -> None:
    print(f"{config.path}: {len(config.targets)} target(s), state in {config.state_dir}")
    for t in config.targets:
        which = (f"lineage {', '.join(t.lineages)}" if t.lineages
                 else f"the lineage covering {', '.join(t.domains)}")
        preset = f" (preset {t.preset})" if t.preset else ""
        print(f"[{t.name}]{preset} {which} -> {t.describe()}; key files "
              f"{t.owner_name}:{t.group_name} {t.key_mode:04o}, others 0644; keep {t.keep}")
        if t.domains and t.lineages:
            print(f"    must cover: {', '.join(t.domains)}")
        if t.password_file:
            read_password(t)  # check-config says now what a deploy would refuse
            print(f"    keystore: PKCS#12, password from {t.password_file}, alias the "
                  "lineage name")
        for c in t.check:
            print(f"    check: {c}")
        for c in t.reload:
            print(f"    reload: {c}")


def run(args: argparse.Namespace | SimpleNamespace) -> int:
    if args.command is None and not os.environ.get("RENEWED_LINEAGE"):
        raise ConfigError("no command given and $RENEWED_LINEAGE is not set (run "
                          "'deploy --all', or use this as certbot's --deploy-hook)")
    config_dir = _config_dir(args)
    config = load(args.config or os.path.join(config_dir, CONFIG_NAME))
    command = args.command
    if command == "check-config":
        _show_config(config)
        return EXIT_OK
    deployer = Deployer(config, config_dir)
    if command == "status":
        rows = deployer.status()
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for r in rows:
                print(f"[{r['target']}] {r['destination']}: lineage {r['lineage']} "
                      f"v{r['version']} serial {r['serial']} expires {r['not_after']}; "
                      f"{r['detail']}")
        return EXIT_OK if all(r["in_sync"] for r in rows) else EXIT_FAILED
    if command == "rollback":
        with deployer.state.lock(args.lock_timeout):
            result = deployer.rollback(args.target)
        _print_result(result, False)
        return EXIT_OK if result.ok else EXIT_FAILED
    if command is None:  # certbot deploy hook ($RENEWED_LINEAGE checked above)
        renewed = os.environ["RENEWED_LINEAGE"]
        wanted: set[str] | None = {os.path.basename(os.path.normpath(renewed))}
        dry_run, as_json = False, False
    else:
        if not args.all and not args.lineage:
            raise ConfigError("deploy: say which: --lineage NAME (repeatable) or --all")
        wanted = None if args.all else set(args.lineage)
        dry_run, as_json = args.dry_run, args.json
    if dry_run:  # reads only: no lock, nothing created
        result = deployer.deploy(wanted, dry_run=True)
    else:
        with deployer.state.lock(args.lock_timeout):
            result = deployer.deploy(wanted)
    _print_result(result, as_json)
    return EXIT_OK if result.ok else EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    args: argparse.Namespace | SimpleNamespace
    if words:
        args = build_parser().parse_args(words)
    else:
        # The deploy hook's own path (no arguments): argparse is not even imported,
        # because this runs on every renewal and its start-up time is what users feel.
        args = SimpleNamespace(command=None, config_dir=None, config=None, debug=False,
                               lock_timeout=DEFAULT_LOCK_TIMEOUT)
    try:
        return run(args)
    except (ConfigError, LockError) as exc:
        print(f"certbot-atomic-deploy: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DeployError as exc:
        print(f"certbot-atomic-deploy: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:  # outside any target (state dir, lock): still one line
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"certbot-atomic-deploy: {where}{exc.strerror or exc} (an I/O error outside the "
              "targets; no target was left half-written: check the disk and run again)",
              file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # a bug or an environment we did not foresee: still one line
        if args.debug:
            raise
        print(f"certbot-atomic-deploy: {describe_unexpected(exc)}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())

"""``certbot-perms``: apply a key spec from a deploy hook, or audit a config dir.

The only module of this package that reads ``os.environ``. Exit codes, the
same as ``certbot-atomic-deploy``'s (:mod:`daemon_keys.errors`): 0 done, 1
something failed, or ``check`` found something, 2 usage, a bad key spec or
config, a lineage that does not exist. Every error is one line on stderr
(``--debug`` shows the traceback of an unexpected one).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from certbot_perms.audit import as_json, audit
from certbot_perms.lineage import apply_key_permissions, split_lineage_ref
from certbot_perms.records import record_spec, renewal_options, spec_for
from daemon_keys.command import DEBUG_OPTION, add_global_options, run_reporting
from daemon_keys.errors import EXIT_FAILED, EXIT_OK, EXIT_STATUS, ConfigError, UsageError
from daemon_keys.fs import require_dir
from daemon_keys.keyspec import KeySpec, parse_spec
from daemon_keys.text import say

PROG = "certbot-perms"
DEFAULT_CONFIG_DIR = "/etc/letsencrypt"
MAN_SUMMARY = ("give Certbot's private keys the owner, group and mode their daemons need, "
               "and audit them")
# The man page's sections after the options (scripts/manpages; man/certbot-perms.1).
MAN_SECTIONS = (
    ("Examples", """certbot-perms apply --key-group ssl-cert mail.example.org

certbot certonly ... --deploy-hook 'certbot-perms apply' (re-applies the recorded spec)

certbot run -a standalone -i perms --perms-key-group ssl-cert -d mail.example.org
(the installer: the spec is kept in the lineage's renewal configuration)

certbot-perms check --json (exit 1 when anything is found; --fix tightens it)"""),
    ("Exit status", EXIT_STATUS),
    ("Files", """CONFIG_DIR/certbot-perms/NAME.conf: the key spec recorded by apply with
options, for lineages whose installer is not perms.

CONFIG_DIR/renewal/NAME.conf: certbot's own record; with installer = perms it holds
perms_key_owner, perms_key_group and perms_key_mode."""),
    ("See also", "certbot(1), certbot-atomic-deploy(1), setfacl(1), acl(5)"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Give Certbot lineages' private keys the owner, group and mode their "
                    "daemons need, and audit a config dir for keys readable too widely.")
    sub = parser.add_subparsers(dest="command", required=True)

    apply = sub.add_parser(
        "apply", help="apply a key spec to lineages (for --deploy-hook)",
        description="Apply a key owner/group/mode to lineages and let that owner and group "
                    "reach live/<name>/privkey.pem. With options, the spec is also recorded "
                    "(<config-dir>/certbot-perms/<name>.conf) so a later run without options, "
                    "such as the deploy hook, re-applies it.")
    apply.add_argument("lineages", nargs="*", metavar="LINEAGE",
                       help="lineage name or live directory (default: $RENEWED_LINEAGE)")
    apply.add_argument("--key-owner", metavar="USER", help="owner: user name or uid")
    apply.add_argument("--key-group", metavar="GROUP", help="group: group name or gid")
    apply.add_argument("--key-mode", metavar="MODE",
                       help="octal mode, at most 0640 (default 0640 with --key-group, else 0600)")

    check = sub.add_parser(
        "check", help="audit keys and directories (exit 1 if anything is found)",
        description="Report every private key readable beyond its lineage's spec (or beyond "
                    "0600 root where none is set), world-readable account keys, unsafe "
                    "directory modes, and ACL entries on live/ and archive/ that no lineage's "
                    "spec asks for. Exit 1 when something is found, for monitoring.")
    check.add_argument("--fix", action="store_true", help="tighten what is found")
    check.add_argument("--json", action="store_true", help="print findings as JSON")
    add_global_options(parser, [apply, check], [
        (("--config-dir",), {"default": None, "help": (
            "certbot config dir (default: apply: from LINEAGE's path, else "
            f"{DEFAULT_CONFIG_DIR}; check: {DEFAULT_CONFIG_DIR})")}),
        DEBUG_OPTION])
    return parser


def _given_spec(args: argparse.Namespace) -> KeySpec | None:
    if args.key_owner is None and args.key_group is None and args.key_mode is None:
        return None
    return parse_spec(args.key_owner, args.key_group, args.key_mode)


def cmd_apply(args: argparse.Namespace) -> int:
    refs = list(args.lineages)
    as_hook = not refs
    if not refs:
        renewed = os.environ.get("RENEWED_LINEAGE")
        if not renewed:
            raise UsageError("no lineage given and $RENEWED_LINEAGE is not set "
                             "(name a lineage, or run this as certbot's --deploy-hook)")
        refs = [renewed]
    given = _given_spec(args)  # validated before anything is touched
    targets = []
    for ref in refs:
        config_dir, name = split_lineage_ref(ref, args.config_dir or DEFAULT_CONFIG_DIR)
        if args.config_dir and "/" in ref and os.path.abspath(config_dir) != os.path.abspath(
                args.config_dir):
            raise UsageError(f"{ref}: not under --config-dir {args.config_dir}")
        live = os.path.join(config_dir, "live", name)
        require_dir(live, f"{live}: no such lineage (see 'certbot certificates' for the names)")
        spec = given
        if spec is None:
            spec, _source = spec_for(config_dir, name)
            if spec is None and as_hook:
                # The global hook (renewal-hooks/deploy/) runs for every lineage:
                # one with no spec (an nginx lineage) is not its business.
                say(f"lineage {name}: no key spec recorded; left as certbot made it")
                continue
            if spec is None:
                raise UsageError(f"lineage {name}: no key spec recorded (run once: "
                                 f"certbot-perms apply --key-group GROUP {name})")
        else:
            _refuse_over_installer(config_dir, name, spec)
        targets.append((config_dir, name, spec))
    for config_dir, name, spec in targets:
        report = apply_key_permissions(config_dir, name, spec)
        if given is not None and renewal_options(config_dir, name) is None:
            record_spec(config_dir, name, spec)
        for line in report.changed:
            say(line)
        for line in report.warnings:
            say(f"warning: {line}", file=sys.stderr)
        say(f"lineage {name}: keys are {spec.describe()}")
    return EXIT_OK


def _refuse_over_installer(config_dir: str, name: str, spec: KeySpec) -> None:
    """A lineage whose renewal conf names the perms installer keeps the spec recorded
    there (certbot re-applies it on every renewal): another one given here would be
    undone at the next renewal, so it is refused, naming the way that lasts."""
    recorded = renewal_options(config_dir, name)
    if recorded is None:
        return
    source = os.path.join(config_dir, "renewal", f"{name}.conf")
    try:
        held, source = spec_for(config_dir, name)
    except ConfigError:
        held = None  # a value there is bad: reconfigure replaces it all the same
    if held == spec:
        return
    flags = " ".join(f"--perms-{opt} {value}" for opt, value in spec.as_options().items())
    raise UsageError(f"lineage {name}: {source} records the perms installer"
                     f"{f' with {held.describe()}' if held else ''}, which certbot "
                     f"re-applies on every renewal; change it there: certbot reconfigure "
                     f"--cert-name {name} {flags} (certbot 2.3 or newer; before that: "
                     f"certbot renew --cert-name {name} --force-renewal {flags})")


def cmd_check(args: argparse.Namespace) -> int:
    args.config_dir = args.config_dir or DEFAULT_CONFIG_DIR
    findings = audit(args.config_dir, fix=args.fix)
    if args.json:
        print(json.dumps({"config_dir": args.config_dir, "findings": as_json(findings)},
                         indent=2))
    else:
        for finding in findings:
            say(finding.line())
        if not findings:
            say(f"{args.config_dir}: no key readable beyond its spec, no unsafe directory")
    remaining = [f for f in findings if not f.fixed]
    return EXIT_FAILED if remaining else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = cmd_apply if args.command == "apply" else cmd_check
    return run_reporting(PROG, lambda: command(args), args.debug)


if __name__ == "__main__":
    sys.exit(main())

"""The ``perms`` Certbot installer: the only module of this package that imports certbot.

A thin adapter: it turns ``--perms-key-owner/-group/-mode`` (or ``perms-key-*``
in cli.ini) into a :class:`~daemon_keys.keyspec.KeySpec` and hands it to
:func:`~certbot_perms.lineage.apply_key_permissions`, at the three moments
Certbot offers:

- ``deploy_cert``: at issuance (``certbot run -i perms`` / ``certbot install``);
- ``renew_deploy``: after each renewal, because Certbot gives a renewed key the
  old key's group and mode bits, but not its owner;
- ``generic_updates``: on every ``certbot renew``, due or not, so drift (a
  manual chmod, a restored backup) heals within a day.

Certbot stores the options in ``renewal/<name>.conf`` and restores them for
the recorded installer, so ``certbot renew`` needs no flags. This installer
configures no server: enhancements are refused, ``restart`` reloads nothing
(use a deploy hook, or certbot-atomic-deploy, to reload daemons).
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable
from typing import Any

from certbot import errors, interfaces
from certbot.plugins import common

from certbot_perms.lineage import ChownRefused, apply_key_permissions, hold_previous_key
from certbot_perms.records import renewal_options
from daemon_keys.errors import KeysError
from daemon_keys.keyspec import KeySpec, parse_spec
from daemon_keys.text import escape

logger = logging.getLogger(__name__)


class PermsInstaller(common.Plugin, interfaces.Installer, interfaces.RenewDeployer,
                     interfaces.GenericUpdater):
    """Give the lineage's private key the owner, group and mode its daemons need."""

    description = ("Keep the private key's owner, group and mode across renewals "
                   "(configures no server)")

    @classmethod
    def add_parser_arguments(cls, add: Callable[..., None]) -> None:
        add("key-owner", default=None, metavar="USER",
            help="Owner of the private key: a user name or uid (default: the user "
                 "certbot runs as, root when run as root)")
        add("key-group", default=None, metavar="GROUP",
            help="Group of the private key, e.g. ssl-cert: its members may read the key "
                 "(default: the group certbot runs as, root when run as root)")
        add("key-mode", default=None, metavar="MODE",
            help="Octal mode of the private key, at most 0640 (default: 0640 with "
                 "--perms-key-group, else 0600)")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._spec: KeySpec | None = None
        self._deployed: set[str] = set()  # lineage key paths deploy_cert has handled

    def more_info(self) -> str:
        return ("Sets owner, group and mode of every private key of the lineage and lets "
                "that owner and group reach live/<name>/privkey.pem, at issuance and on "
                "every renewal. It does not configure or reload any server.")

    def _options(self) -> tuple[str | None, str | None, str | None]:
        return self.conf("key-owner"), self.conf("key-group"), self.conf("key-mode")

    def spec(self) -> KeySpec:
        """The validated spec (parsed once; raises PluginError naming the option)."""
        if self._spec is None:
            try:
                self._spec = parse_spec(*self._options(), option_prefix="--perms-")
            except KeysError as exc:
                raise errors.PluginError(escape(str(exc))) from None
        return self._spec

    def prepare(self) -> None:
        # Validate before anything is issued or touched. Not in 'certbot renew':
        # there Certbot drops an installer whose prepare fails, renews anyway and
        # rewrites the renewal conf without it, losing the spec for good. The
        # renewal instead fails loudly in renew_deploy/generic_updates, keeping it.
        if getattr(self.config, "verb", None) != "renew":
            self.spec()

    def _apply(self, key_path: str, lineage_name: str | None = None,
               renewed: bool = False) -> None:
        live_dir = os.path.dirname(key_path)
        config_dir = os.path.dirname(os.path.dirname(live_dir))
        name = lineage_name or os.path.basename(live_dir)
        try:
            spec = self.spec()
        except errors.PluginError as exc:
            raise errors.PluginError(escape(self._unusable(config_dir, name, str(exc), renewed))
                                     ) from None
        try:
            report = apply_key_permissions(config_dir, name, spec)
        except ChownRefused as exc:
            # Certbot run unprivileged: say what could not be done, keep renewing.
            logger.warning("perms: %s", escape(str(exc)))
            return
        except KeysError as exc:
            raise errors.PluginError(escape(str(exc))) from None
        for line in report.changed:
            logger.info("perms: %s", escape(line))
        for line in report.warnings:
            logger.warning("perms: %s", escape(line))

    @staticmethod
    def _unusable(config_dir: str, name: str, why: str, renewed: bool) -> str:
        """The line for a renewal whose recorded spec cannot be applied. A renewed
        key first gets the previous key's owner, group and mode."""
        held = ""
        if renewed:
            try:
                report = hold_previous_key(config_dir, name)
                held = f"; its new key keeps the previous key's {report.spec.describe()}"
            except KeysError as exc:
                held = f"; its new key is as certbot made it ({exc})"
        flag = ("--perms-key-owner USER" if re.search(r"key[-_]owner", why) else
                "--perms-key-mode MODE" if re.search(r"key[-_]mode", why) else
                "--perms-key-group GROUP")
        return (f"perms: lineage {name}: cannot apply its key spec: {why}{held}. Fix the "
                f"spec in renewal/{name}.conf (create the user or group, or certbot "
                f"reconfigure --cert-name {name} -i perms {flag}), then run "
                "certbot renew")

    def _refuse_unrecorded(self, key_path: str) -> None:
        """deploy_cert on a lineage whose renewal conf records another spec: certbot
        (reinstalling an existing certificate, or 'certbot install') does not rewrite
        it, and would put the old spec back at the next renewal."""
        live_dir = os.path.dirname(key_path)
        config_dir = os.path.dirname(os.path.dirname(live_dir))
        name = os.path.basename(live_dir)
        try:
            recorded = renewal_options(config_dir, name)
        except KeysError as exc:
            raise errors.PluginError(escape(str(exc))) from None
        given = self.spec()
        if recorded is not None:
            try:
                if parse_spec(recorded["key-owner"], recorded["key-group"],
                              recorded["key-mode"], all_defaults=True) == given:
                    return
            except KeysError:
                pass  # a bad recorded value: the new one, via reconfigure, replaces it
            what = "records another key spec for the perms installer"
        else:
            what = "does not record the perms installer"
        flags = " ".join(f"--perms-{opt} {value}" for opt, value in given.as_options().items())
        raise errors.PluginError(
            f"perms: renewal/{name}.conf {what}, and certbot does not rewrite it when it "
            f"reinstalls an existing certificate, so renewals would not keep "
            f"{given.describe()}; record it with: certbot reconfigure --cert-name {name} "
            f"-i perms {flags} (certbot 2.3 or newer; before that: certbot renew "
            f"--cert-name {name} --force-renewal -i perms {flags})")

    # Installer duties

    def deploy_cert(self, domain: str, cert_path: str, key_path: str,
                    chain_path: str, fullchain_path: str) -> None:
        # Certbot calls this once per domain of the certificate: the lineage once is enough.
        if key_path not in self._deployed:
            self._refuse_unrecorded(key_path)
            self._apply(key_path)
            self._deployed.add(key_path)

    def get_all_names(self) -> Iterable[str]:
        return []  # no server configuration to read names from: give -d

    def enhance(self, domain: str, enhancement: str,
                options: list[str] | str | None = None) -> None:
        raise errors.PluginError(
            f"the perms installer does not configure servers, so it cannot apply the "
            f"'{enhancement}' enhancement; drop --redirect/--hsts/--uir/--staple-ocsp")

    def supported_enhancements(self) -> list[str]:
        return []

    def save(self, title: str | None = None, temporary: bool = False) -> None:
        """Nothing to save: key permissions are applied directly, not via config files."""

    def rollback_checkpoints(self, rollback: int = 1) -> None:
        """No checkpoints: permission changes are not rolled back."""

    def recovery_routine(self) -> None:
        """No checkpoints to recover."""

    def config_test(self) -> None:
        """No server configuration to test."""

    def restart(self) -> None:
        logger.debug("perms: no server to restart; reload daemons with a deploy hook "
                     "(e.g. certbot-atomic-deploy)")

    # Updater interfaces

    def renew_deploy(self, lineage: interfaces.RenewableCert, *args: Any, **kwargs: Any) -> None:
        self._apply(lineage.key_path, lineage.lineagename, renewed=True)

    def generic_updates(self, lineage: interfaces.RenewableCert, *args: Any,
                        **kwargs: Any) -> None:
        self._apply(lineage.key_path, lineage.lineagename)

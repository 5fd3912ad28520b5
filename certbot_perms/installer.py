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
from collections.abc import Callable, Iterable
from typing import Any

from certbot import errors, interfaces
from certbot.plugins import common

from certbot_perms.lineage import ChownRefused, apply_key_permissions
from daemon_keys.errors import KeysError
from daemon_keys.keyspec import KeySpec, parse_spec

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
                raise errors.PluginError(str(exc)) from None
        return self._spec

    def prepare(self) -> None:
        # Validate before anything is issued or touched.
        self.spec()

    def _apply(self, key_path: str, lineage_name: str | None = None) -> None:
        live_dir = os.path.dirname(key_path)
        config_dir = os.path.dirname(os.path.dirname(live_dir))
        name = lineage_name or os.path.basename(live_dir)
        try:
            report = apply_key_permissions(config_dir, name, self.spec())
        except ChownRefused as exc:
            # Certbot run unprivileged: say what could not be done, keep renewing.
            logger.warning("perms: %s", exc)
            return
        except KeysError as exc:
            raise errors.PluginError(str(exc)) from None
        for line in report.changed:
            logger.info("perms: %s", line)
        for line in report.warnings:
            logger.warning("perms: %s", line)

    # Installer duties

    def deploy_cert(self, domain: str, cert_path: str, key_path: str,
                    chain_path: str, fullchain_path: str) -> None:
        # Certbot calls this once per domain of the certificate: the lineage once is enough.
        if key_path not in self._deployed:
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
        self._apply(lineage.key_path, lineage.lineagename)

    def generic_updates(self, lineage: interfaces.RenewableCert, *args: Any,
                        **kwargs: Any) -> None:
        self._apply(lineage.key_path, lineage.lineagename)

"""Real servers serve what we publish: Postfix, HAProxy, nginx and Dovecot through renewals.

For each: issue through certbot and pebble, deploy with the daemon's preset,
connect with ``openssl s_client`` and compare the served serial with the
lineage's; renew (certbot runs our deploy hook, which runs the check and the
reload) and compare again. A broken nginx config shows the rollback: the
check fails, the target goes back, nginx keeps serving the previous certificate.
"""
from __future__ import annotations

import grp
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.daemons import (
    Daemon,
    dovecot,
    haproxy,
    lineage_serial,
    mosquitto,
    nginx,
    postfix,
    seed,
    served_serial,
)
from tests.support.procs import wait_until
from tests.support.site import DEPLOY, deploy, mode_of, write_conf
from tests.support.testbed import Certbot

pytestmark = [pytest.mark.root, pytest.mark.skipif(
    not all(shutil.which(d, path="/usr/sbin:/usr/bin") for d in
            ("postfix", "haproxy", "nginx", "dovecot")),
    reason="the daemons are installed by scripts/test (postfix haproxy nginx-light "
           "dovecot-imapd)")]


def _target(certbot: Certbot, daemon: Daemon, where: str) -> None:
    """A target for lineage 'mail' with the daemon's preset; check and reload overridden
    with the private instance's own (it runs on its own config file)."""
    certbot.config_dir.mkdir(parents=True, exist_ok=True)
    write_conf(certbot.config_dir, f"[{daemon.name}]\npreset = {daemon.name}\nlineage = mail\n"
                                   f"{where}\ncheck = {daemon.check}\nreload = {daemon.reload}\n")


def _issue_with_hook(certbot: Certbot, name: str = "mail", *args: str) -> Path:
    certbot.extra_env["PATH"] = f"{Path(DEPLOY).parent}:/usr/sbin:{os.environ['PATH']}"
    certbot.certonly(name, ["mail.example.org"], "--deploy-hook", "certbot-atomic-deploy",
                     *args)
    return certbot.live(name)


def test_postfix_serves_the_combined_file_through_a_renewal(certbot: Certbot,
                                                            open_tmp: Path) -> None:
    tls = open_tmp / "postfix-tls"
    tls.mkdir(mode=0o755)
    seed(tls / "mail.pem")
    with postfix(open_tmp / "postfix", f"{tls}/mail.pem") as daemon:
        _target(certbot, daemon, f"path = {tls}/mail.pem")
        live = _issue_with_hook(certbot)
        assert mode_of(tls / "mail.pem") == 0o600
        assert served_serial(daemon.port, "smtp") == lineage_serial(live)
        first = lineage_serial(live)
        certbot.renew("--force-renewal")
        assert served_serial(daemon.port, "smtp") == lineage_serial(live) != first


def test_haproxy_serves_the_combined_file_through_a_renewal(certbot: Certbot,
                                                            open_tmp: Path) -> None:
    out = open_tmp / "haproxy-certs"
    out.mkdir(mode=0o755)
    crt = out / "mail.pem"
    seed(crt, order="key-last")
    with haproxy(open_tmp / "haproxy", str(crt)) as daemon:
        _target(certbot, daemon, f"path = {crt}")
        live = _issue_with_hook(certbot)
        first = lineage_serial(live)
        _eventually(lambda: served_serial(daemon.port) == first)
        certbot.renew("--force-renewal")
        _eventually(lambda: served_serial(daemon.port) == lineage_serial(live) != first)


def test_nginx_on_a_versioned_directory_and_rollback_on_a_broken_config(
        certbot: Certbot, open_tmp: Path) -> None:
    directory = open_tmp / "nginx-tls"
    ng_root = open_tmp / "nginx"
    seed(directory)
    current = directory / "current"
    with nginx(ng_root, f"{current}/fullchain.pem", f"{current}/privkey.pem") as daemon:
        _target(certbot, daemon, f"directory = {directory}")
        live = _issue_with_hook(certbot)
        v1 = lineage_serial(live)
        _eventually(lambda: served_serial(daemon.port) == v1)
        certbot.renew("--force-renewal")
        _eventually(lambda: served_serial(daemon.port) == lineage_serial(live) != v1)
        v2 = lineage_serial(live)
        assert os.readlink(current) == "v2"  # v0 was the seed, v1 the issuance

        conf = ng_root / "nginx.conf"
        conf.write_text(conf.read_text() + "\nthis is not nginx syntax;\n")
        renewed = certbot.renew("--force-renewal", check=False)
        assert "reported error code 1" in renewed.stderr  # certbot saw the hook fail ...
        assert "reload skipped" in renewed.stderr  # ... on the check, and said so
        assert lineage_serial(live) != v2  # certbot did renew ...
        assert os.readlink(current) == "v2"  # ... but the target went back
        assert served_serial(daemon.port) == v2  # and nginx was not reloaded
        status = deploy(certbot.config_dir, "status")
        assert "lineage is at v3; run deploy" in status.stdout


def test_dovecot_on_a_versioned_directory_through_a_renewal(certbot: Certbot,
                                                           open_tmp: Path) -> None:
    directory = open_tmp / "dovecot-tls"
    seed(directory)
    current = directory / "current"
    with dovecot(open_tmp / "dovecot", f"{current}/fullchain.pem",
                 f"{current}/privkey.pem") as daemon:
        _target(certbot, daemon, f"directory = {directory}")
        live = _issue_with_hook(certbot)
        v1 = lineage_serial(live)
        _eventually(lambda: served_serial(daemon.port, "imap") == v1)
        certbot.renew("--force-renewal")
        _eventually(lambda: served_serial(daemon.port, "imap") == lineage_serial(live) != v1)


@pytest.mark.skipif(not shutil.which("mosquitto", path="/usr/sbin"),
                    reason="mosquitto is installed by scripts/test")
def test_mosquitto_reads_the_key_as_its_user_and_a_key_it_cannot_read_is_rolled_back(
        certbot: Certbot, open_tmp: Path) -> None:
    """The mosquitto preset: root:mosquitto 0640, read by the mosquitto user after it
    drops root, reloaded by SIGHUP. A spec that keeps its user out (group root) is
    caught by opening the key as that user before the reload: rolled back, and the
    broker keeps serving what it had."""
    tls = open_tmp / "mosquitto-tls"
    tls.mkdir(mode=0o755)
    combined = tls / "mqtt.pem"
    seed(combined)
    shutil.chown(combined, group="mosquitto")
    combined.chmod(0o640)
    with mosquitto(open_tmp / "mosquitto", str(combined)) as daemon:
        _target(certbot, daemon, f"path = {combined}")
        # ECDSA like the seed: on SIGHUP Mosquitto adds a certificate of another key type
        # beside the one it has and goes on serving the old (ECDSA first), so a lineage
        # that changes key type needs a restart (certbot before 2.0 issues RSA).
        live = _issue_with_hook(certbot, "mail", "--key-type", "ecdsa")
        first = lineage_serial(live)
        assert mode_of(combined) == 0o640 and combined.stat().st_gid == grp.getgrnam(
            "mosquitto").gr_gid
        _eventually(lambda: served_serial(daemon.port) == first)
        certbot.renew("--force-renewal")
        second = lineage_serial(live)
        _eventually(lambda: served_serial(daemon.port) == second != first)

        conf = certbot.config_dir / "atomic-deploy.conf"
        conf.write_text(conf.read_text() + "group = root\n")  # keeps the mosquitto user out
        renewed = certbot.renew("--force-renewal", check=False)
        assert f"check 'open {combined} as mosquitto' failed (mosquitto cannot open it: " \
               "Permission denied)" in renewed.stderr, renewed.stderr
        assert lineage_serial(live) != second  # certbot renewed, the target went back:
        assert combined.stat().st_gid == grp.getgrnam("mosquitto").gr_gid
        assert served_serial(daemon.port) == second  # and the broker was not reloaded


def _eventually(check: Callable[[], bool], seconds: float = 10.0) -> None:
    """A reload is asynchronous in the daemon: poll (bounded) until ``check()`` holds."""
    wait_until(check, seconds, "the daemon serving the new certificate", interval=0.2)

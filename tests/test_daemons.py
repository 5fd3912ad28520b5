"""Real servers serve what we publish, through renewals: one private instance of each
daemon with a preset (Postfix, HAProxy, nginx, Dovecot, Mosquitto, Apache, slapd, Prosody,
Tomcat, Exim, OpenSMTPD, sendmail, Samba AD DC, Courier), from Debian's packages.

For each: issue through certbot and pebble, deploy with the daemon's preset,
connect with ``openssl s_client`` and compare the served serial with the
lineage's; renew (certbot runs our deploy hook, which runs the check and the
reload) and compare again. Where a preset carries a daemon's refusal (OpenSMTPD's
owner, Samba's exact mode, sendmail's group-readable key), the daemon is shown to
refuse it too, and check-config to refuse it first. A broken nginx config shows the
rollback: the check fails, the target goes back, nginx keeps serving the previous
certificate. Exim, OpenSMTPD, sendmail and courier-imap conflict with Postfix or
Dovecot as packages: scripts/bootstrap.sh unpacks them (``UNPACKED``).
"""
from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.daemons import (
    Daemon,
    apache,
    courier,
    dovecot,
    exim,
    haproxy,
    lineage_serial,
    mosquitto,
    nginx,
    offers_starttls,
    opensmtpd,
    postfix,
    prosody,
    samba,
    seed,
    sendmail,
    sendmail_cf,
    served_serial,
    serves,
    slapd,
    tomcat,
    unpacked,
)
from tests.support.procs import wait_until
from tests.support.site import DEPLOY, deploy, mode_of, write_conf
from tests.support.testbed import Certbot

pytestmark = [pytest.mark.root, pytest.mark.daemon, pytest.mark.skipif(
    not all(shutil.which(d, path="/usr/sbin:/usr/bin") for d in
            ("postfix", "haproxy", "nginx", "dovecot")),
    reason="the daemons are installed by scripts/test (postfix haproxy nginx-light "
           "dovecot-imapd)")]


def _target(certbot: Certbot, daemon: Daemon, where: str) -> None:
    """A target for lineage 'mail' with the daemon's preset; check and reload overridden
    with the private instance's own (it runs on its own config file), or none where the
    preset has none."""
    certbot.config_dir.mkdir(parents=True, exist_ok=True)
    commands = "".join(f"{key} = {value}\n" for key, value in
                       (("check", daemon.check), ("reload", daemon.reload)) if value)
    write_conf(certbot.config_dir, f"[{daemon.name}]\npreset = {daemon.name}\nlineage = mail\n"
                                   f"{where}\n{commands}")


def _through_a_renewal(certbot: Certbot, daemon: Daemon, starttls: str | None = None,
                       *issue: str) -> Path:
    """Issue with the hook, see the daemon serve it; renew, see it serve the new one."""
    live = _issue_with_hook(certbot, "mail", *issue)
    first = lineage_serial(live)
    _eventually(lambda: serves(daemon.port, first, starttls))
    certbot.renew("--force-renewal")
    second = lineage_serial(live)
    assert second != first
    _eventually(lambda: serves(daemon.port, second, starttls))
    return live


def _owned(path: Path, owner: str, group: str, mode: int) -> bool:
    st = path.stat()
    return (pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name,
            mode_of(path)) == (owner, group, mode)


@contextmanager
def _system_users(*names: str) -> Iterator[None]:
    """The daemon users an unpacked package's maintainer scripts would have made: each
    one missing is created (system user, own group, no login) and removed after."""
    made = []
    try:
        for name in names:
            try:
                pwd.getpwnam(name)
            except KeyError:
                subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir",
                                "/nonexistent", "--shell", "/usr/sbin/nologin", "--user-group",
                                name], check=True, timeout=30)
                made.append(name)
        yield
    finally:
        for name in made:
            subprocess.run(["userdel", name], check=False, timeout=30)


def _needs(*paths: str | Path) -> pytest.MarkDecorator:
    missing = [str(p) for p in paths if not os.access(p, os.X_OK)]
    return pytest.mark.skipif(bool(missing), reason=f"{', '.join(missing)} missing: "
                              "scripts/bootstrap.sh installs or unpacks it")


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


@_needs("/usr/sbin/apache2")
def test_apache_serves_the_key_in_its_certificate_file_through_a_renewal(
        certbot: Certbot, open_tmp: Path) -> None:
    tls = _dir(open_tmp / "apache-tls")
    seed(tls / "mail.pem")
    with apache(open_tmp / "apache", f"{tls}/mail.pem") as daemon:
        _target(certbot, daemon, f"path = {tls}/mail.pem")
        _through_a_renewal(certbot, daemon)
        assert _owned(tls / "mail.pem", "root", "root", 0o600)


@_needs("/usr/sbin/slapd")
def test_slapd_reads_the_key_as_openldap_through_a_renewal(certbot: Certbot,
                                                           open_tmp: Path) -> None:
    tls = _dir(open_tmp / "slapd-tls")
    seed(tls / "ldap.pem", group="openldap", mode=0o640)
    with slapd(open_tmp / "slapd", f"{tls}/ldap.pem") as daemon:
        _target(certbot, daemon, f"path = {tls}/ldap.pem")
        _through_a_renewal(certbot, daemon, "ldap")
        assert _owned(tls / "ldap.pem", "root", "openldap", 0o640)


@_needs("/usr/bin/prosody")
def test_prosody_reads_the_key_as_prosody_through_a_renewal(certbot: Certbot,
                                                            open_tmp: Path) -> None:
    tls = _dir(open_tmp / "prosody-tls")
    seed(tls / "xmpp.pem", group="prosody", mode=0o640)
    with prosody(open_tmp / "prosody", f"{tls}/xmpp.pem") as daemon:
        _target(certbot, daemon, f"path = {tls}/xmpp.pem")
        _through_a_renewal(certbot, daemon, "xmpp")
        assert _owned(tls / "xmpp.pem", "root", "prosody", 0o640)


@_needs("/usr/share/tomcat10/bin/catalina.sh", "/usr/bin/java")
def test_tomcat_reads_the_keystore_as_tomcat_through_a_renewal(certbot: Certbot,
                                                               open_tmp: Path) -> None:
    tls = _dir(open_tmp / "tomcat-tls")
    keystore = tls / "mail.p12"
    seed(keystore, group="tomcat", mode=0o640)
    password = certbot.config_dir / "tomcat.pass"
    certbot.config_dir.mkdir(parents=True, exist_ok=True)
    password.write_text("changeit\n")
    password.chmod(0o600)
    with tomcat(open_tmp / "tomcat", str(keystore), "changeit") as daemon:
        _target(certbot, daemon, f"path = {keystore}\npassword_file = {password}")
        _through_a_renewal(certbot, daemon)
        assert _owned(keystore, "root", "tomcat", 0o640)


@_needs(unpacked("/usr/sbin/exim4"))
def test_exim_reads_the_key_as_debian_exim_through_a_renewal(certbot: Certbot,
                                                             open_tmp: Path) -> None:
    with _system_users("Debian-exim"):
        tls = _dir(open_tmp / "exim-tls")
        seed(tls / "mail.pem", group="Debian-exim", mode=0o640)
        with exim(open_tmp / "exim", f"{tls}/mail.pem") as daemon:
            _target(certbot, daemon, f"path = {tls}/mail.pem")
            _through_a_renewal(certbot, daemon, "smtp")
            assert _owned(tls / "mail.pem", "root", "Debian-exim", 0o640)


@_needs(unpacked("/usr/sbin/smtpd"), "/usr/bin/unshare")
def test_opensmtpd_through_a_renewal_and_it_refuses_the_owner_its_preset_refuses(
        certbot: Certbot, open_tmp: Path) -> None:
    """smtpd loads the key as root and will not start on one another user owns: the
    preset's rule is smtpd's own, refused by check-config before anything runs."""
    with _system_users("opensmtpd", "opensmtpq"):
        tls = _dir(open_tmp / "opensmtpd-tls")
        key = tls / "mail.pem"
        seed(key)
        with opensmtpd(open_tmp / "opensmtpd", str(key)) as daemon:
            _target(certbot, daemon, f"path = {key}")
            _through_a_renewal(certbot, daemon, "smtp")
            assert _owned(key, "root", "root", 0o600)

            conf = certbot.config_dir / "atomic-deploy.conf"
            conf.write_text(conf.read_text() + "owner = opensmtpd\n")
            refused = deploy(certbot.config_dir, "check-config")
            assert refused.returncode == 2
            assert "[opensmtpd] owner: opensmtpd refuses a key file not owned by root" \
                in refused.stderr

            shutil.chown(key, "opensmtpd")  # what the preset refuses, by hand: so does smtpd
            log = daemon.root / "log"
            subprocess.run([daemon.reload], check=True, timeout=60)
            _eventually(lambda: "not owned by uid 0" in log.read_text(errors="replace"))
            assert not serves(daemon.port, lineage_serial(certbot.live("mail")), "smtp")


@_needs("/usr/sbin/samba", "/usr/bin/samba-tool")
def test_samba_ad_dc_restarted_through_a_renewal_and_it_refuses_the_mode_its_preset_refuses(
        certbot: Certbot, open_tmp: Path) -> None:
    """The samba preset writes the key file (exactly 0600, root's); a second target
    writes the certificate file; both name the restart. The AD DC's
    LDAP server refuses a key of any other mode, and check-config refuses it first."""
    tls = _dir(open_tmp / "samba-tls")
    key, cert = tls / "key.pem", tls / "cert.pem"
    seed(key)  # key and chain in one file: the seed's key file is its certificate file too
    shutil.copy(key, cert)
    with samba(open_tmp / "samba", str(key), str(cert)) as daemon:
        _target(certbot, daemon, f"path = {key}")
        conf = certbot.config_dir / "atomic-deploy.conf"
        conf.write_text(conf.read_text() + f"[samba-cert]\nlineage = mail\npath = {cert}\n"
                                           f"format = fullchain\nreload = {daemon.reload}\n")
        _through_a_renewal(certbot, daemon)
        assert _owned(key, "root", "root", 0o600)
        assert _owned(cert, "root", "root", 0o644)

        conf.write_text(conf.read_text().replace("[samba-cert]", "mode = 0640\n[samba-cert]"))
        refused = deploy(certbot.config_dir, "check-config")
        assert refused.returncode == 2
        assert "[samba] mode: 0640: samba refuses any key mode but 0600" in refused.stderr

        key.chmod(0o640)  # what the preset refuses, by hand: so does the AD DC
        subprocess.run([daemon.reload], check=True, timeout=60)
        log = daemon.root / "log"
        _eventually(lambda: "should be 0600" in log.read_text(errors="replace"))
        assert not serves(daemon.port, lineage_serial(certbot.live("mail")))


@_needs(unpacked("/usr/libexec/sendmail/sendmail"), "/usr/bin/m4", "/usr/bin/unshare")
def test_sendmail_through_a_renewal_and_a_group_readable_key_only_when_told_it_may(
        certbot: Certbot, run_dir: Path) -> None:
    """sendmail takes the preset's root 0600 key through a renewal (SIGHUP). Given a
    0640 key it offers no STARTTLS, which is why check-config refuses mode 0640; with
    DontBlameSendmail=GroupReadableKeyFile in sendmail.cf and dont_blame_sendmail in the
    target, both take it. Neither takes a key below a world-writable directory."""
    tls = _dir(run_dir / "tls")  # below /run: sendmail refuses a key below /tmp
    key = tls / "mail.pem"
    seed(key)
    with sendmail(run_dir / "sendmail", str(key)) as daemon:
        _target(certbot, daemon, f"path = {key}")
        live = _through_a_renewal(certbot, daemon, "smtp")
        assert _owned(key, "root", "root", 0o600)
        serial = lineage_serial(live)

        conf = certbot.config_dir / "atomic-deploy.conf"
        body = conf.read_text() + "group = mail\nmode = 0640\n"
        conf.write_text(body)
        refused = deploy(certbot.config_dir, "check-config")
        assert refused.returncode == 2
        assert "[sendmail] mode: 0640: sendmail refuses a key file this open" in refused.stderr

        shutil.chown(key, group="mail")
        key.chmod(0o640)  # what the preset refuses, by hand: sendmail offers no STARTTLS
        subprocess.run(daemon.reload, shell=True, check=True, timeout=60)
        _eventually(lambda: offers_starttls(daemon.port) is False)

        sendmail_cf(daemon.root, str(key), dont_blame="GroupReadableKeyFile")
        conf.write_text(body + "dont_blame_sendmail = GroupReadableKeyFile\n")
        key.chmod(0o600)  # so that the deploy below has something to put right
        taken = deploy(certbot.config_dir, "deploy", "--all")
        assert taken.returncode == 0, taken.stderr
        assert _owned(key, "root", "mail", 0o640)
        _eventually(lambda: serves(daemon.port, serial, "smtp"))

        tls.chmod(0o1777)  # world-writable, even sticky: sendmail refuses the key again
        subprocess.run(daemon.reload, shell=True, check=True, timeout=60)
        _eventually(lambda: offers_starttls(daemon.port) is False)
        refused = deploy(certbot.config_dir, "check-config")
        assert "is world-writable (mode 1777), and sendmail refuses" in refused.stderr


@_needs("/usr/sbin/couriertcpd", unpacked("/usr/lib/courier/courier/imaplogin"))
def test_courier_reads_the_file_on_each_connection_so_a_renewal_needs_no_reload(
        certbot: Certbot, open_tmp: Path) -> None:
    tls = _dir(open_tmp / "courier-tls")
    seed(tls / "imapd.pem", owner="courier", group="courier")
    with courier(open_tmp / "courier", f"{tls}/imapd.pem") as daemon:
        _target(certbot, daemon, f"path = {tls}/imapd.pem")
        first_pid = daemon.pid()
        _through_a_renewal(certbot, daemon)
        assert daemon.pid() == first_pid  # nothing restarted it
        assert _owned(tls / "imapd.pem", "courier", "courier", 0o600)


def _dir(path: Path) -> Path:
    path.mkdir(mode=0o755)
    return path


def _eventually(check: Callable[[], bool], seconds: float = 10.0) -> None:
    """A reload is asynchronous in the daemon: poll (bounded) until ``check()`` holds."""
    wait_until(check, seconds, "the daemon serving the new certificate", interval=0.2)


def test_the_probe_reads_what_postfix_serves_after_starttls(certbot: Certbot,
                                                           open_tmp: Path) -> None:
    tls = open_tmp / "postfix-tls"
    tls.mkdir(mode=0o755)
    seed(tls / "mail.pem")
    with postfix(open_tmp / "postfix", f"{tls}/mail.pem") as daemon:
        _target(certbot, daemon, f"path = {tls}/mail.pem\nprobe = 127.0.0.1:{daemon.port}/smtp")
        live = _issue_with_hook(certbot)
        rows = json.loads(deploy(certbot.config_dir, "status", "--json").stdout)
        assert [(r["in_sync"], r["probe_ok"]) for r in rows] == [(True, True)]
        assert rows[0]["probe_detail"] == (f"127.0.0.1:{daemon.port}/smtp serves serial "
                                           f"{lineage_serial(live):x}")


def test_the_probe_fails_a_publish_nginx_does_not_serve_until_it_does(
        certbot: Certbot, open_tmp: Path) -> None:
    """No reload configured: nginx keeps serving the seed, the probe says so (exit 1,
    status not in sync); reloaded by hand, the next run's probe finds it in sync."""
    directory = open_tmp / "nginx-tls"
    seed(directory)
    current = directory / "current"
    with nginx(open_tmp / "nginx", f"{current}/fullchain.pem", f"{current}/privkey.pem") as ng:
        certbot.certonly("mail", ["mail.example.org"])
        write_conf(certbot.config_dir, f"[nginx]\npreset = nginx\nlineage = mail\n"
                                       f"directory = {directory}\ncheck = {ng.check}\nreload =\n"
                                       f"probe = 127.0.0.1:{ng.port}\n")
        done = deploy(certbot.config_dir, "deploy", "--all")
        assert done.returncode == 1
        serial = f"{lineage_serial(certbot.live('mail')):x}"
        assert f"but the probe: 127.0.0.1:{ng.port}/tls serves another certificate" in \
            done.stderr and f"not serial {serial} after 10 s" in done.stderr
        status = deploy(certbot.config_dir, "status")
        assert status.returncode == 1 and "the last probe" in status.stdout
        subprocess.run(["sh", "-c", ng.reload], check=True, timeout=30)
        again = deploy(certbot.config_dir, "deploy", "--all")
        assert again.returncode == 0, again.stderr
        status = deploy(certbot.config_dir, "status")
        assert status.returncode == 0 and "probe ok at" in status.stdout

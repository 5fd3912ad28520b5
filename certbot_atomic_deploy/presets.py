"""Daemon presets: ``preset = NAME`` in a target fills in what that daemon expects.

Imports nothing heavy. A preset gives a target its format (for a file target),
owner, group, mode, ``check`` and ``reload``; anything the target section sets
itself wins, and a preset wins over ``[defaults]``. Where the daemon refuses a
key file more open than some mode, the preset also carries that rule, so a
too-wide ``mode`` is a config error before anything is written.

Each preset cites the daemon's own rule (see the README's preset table).
"""
from __future__ import annotations

from typing import NamedTuple


class Preset(NamedTuple):
    why: str
    values: dict[str, object]
    max_mode: int | None = None   # the daemon refuses a key file with any other bit
    exact_mode: int | None = None  # the daemon refuses any other mode
    root_owned: bool = False       # the daemon refuses a key file not owned by uid 0
    # The daemon refuses a key below a world-writable directory, sticky or not.
    no_writable_dirs: bool = False
    # The config key, value that lets the daemon take a wider key, and the mode it allows.
    widened_by: tuple[str, str, int] | None = None


PRESETS: dict[str, Preset] = {
    "postfix": Preset(
        "smtpd_tls_chain_files: key, then its certificate, then the chain, in one file, so a "
        "reader never pairs an old key with a new certificate; read as root",
        {"format": "key+fullchain", "mode": "0600", "check": ["postfix check"],
         "reload": ["postfix reload"]}),
    "dovecot": Preset(
        "ssl_cert = </file and ssl_key = </file; read by the master process as root before "
        "it drops privileges",
        {"format": "key+fullchain", "mode": "0600", "check": ["doveconf -n > /dev/null"],
         "reload": ["doveadm reload"]}),
    "exim": Preset(
        "tls_certificate (with the key in the same file when tls_privatekey is unset) is read "
        "by the Exim user after it drops root: the Debian-exim group must read it",
        {"format": "key+fullchain", "group": "Debian-exim", "mode": "0640",
         "reader": "Debian-exim", "check": ["exim -bV > /dev/null"],
         "reload": ["systemctl reload exim4"]}),
    "sendmail": Preset(
        "confSERVER_KEY must be root's and 0600, in no world-writable directory (sticky or "
        "not): sendmail refuses a group-readable key file unless its DontBlameSendmail "
        "option has GroupReadableKeyFile (then say so: dont_blame_sendmail = "
        "GroupReadableKeyFile, and mode 0640 is taken)",
        {"format": "key+fullchain", "mode": "0600", "check": ["sendmail -bt < /dev/null"],
         "reload": ["systemctl reload sendmail"]},
        max_mode=0o600, root_owned=True, no_writable_dirs=True,
        widened_by=("dont_blame_sendmail", "GroupReadableKeyFile", 0o640)),
    "opensmtpd": Preset(
        "pki key: smtpd refuses a key not owned by uid 0 or readable by others",
        {"format": "key+fullchain", "mode": "0600", "check": ["smtpd -n"],
         "reload": ["systemctl restart opensmtpd"]},
        max_mode=0o640, root_owned=True),
    "samba": Preset(
        "tls keyfile: the AD DC refuses a key whose owner is not its euid (root) or whose mode "
        "is not exactly 0600, and its LDAP server loads a new key only on a restart "
        "(smbcontrol reload-config does not)",
        {"format": "key", "mode": "0600", "check": ["testparm -s > /dev/null"],
         "reload": ["systemctl restart samba-ad-dc"]},
        exact_mode=0o600, root_owned=True),
    "courier": Preset(
        "TLS_CERTFILE holds key and certificate in one file, read by couriertls on every "
        "connection, as root before it drops to the courier user (so no restart, which "
        "would drop sessions); Debian ships it courier:courier 0600, and couriertls itself "
        "refuses no mode",
        {"format": "key+fullchain", "owner": "courier", "group": "courier", "mode": "0600"}),
    "haproxy": Preset(
        "crt: one PEM with the certificate chain and the key, read as root at start and reload",
        {"format": "fullchain+key", "mode": "0600",
         "check": ["haproxy -c -q -f /etc/haproxy/haproxy.cfg"],
         "reload": ["systemctl reload haproxy"]}),
    "nginx": Preset(
        "ssl_certificate and ssl_certificate_key may name one file holding chain and key; "
        "read by the root master",
        {"format": "fullchain+key", "mode": "0600", "check": ["nginx -t -q"],
         "reload": ["nginx -s reload"]}),
    "apache": Preset(
        "SSLCertificateFile may hold the key too (2.4.8+); read by the root parent",
        {"format": "key+fullchain", "mode": "0600", "check": ["apachectl configtest"],
         "reload": ["apachectl graceful"]}),
    "mosquitto": Preset(
        "certfile/keyfile are read by the mosquitto user after it drops root; SIGHUP rereads "
        "them, but a certificate of another key type (RSA after ECDSA) is added beside the "
        "old one, which it goes on serving: restart it after a key-type change",
        {"format": "key+fullchain", "group": "mosquitto", "mode": "0640",
         "reader": "mosquitto", "reload": ["systemctl reload mosquitto"]}),
    "slapd": Preset(
        "olcTLSCertificateKeyFile is read by the openldap user",
        {"format": "key+fullchain", "group": "openldap", "mode": "0640", "reader": "openldap",
         "check": ["slaptest -u -Q"], "reload": ["systemctl restart slapd"]}),
    "prosody": Preset(
        "certificates are read by the prosody user",
        {"format": "key+fullchain", "group": "prosody", "mode": "0640", "reader": "prosody",
         "check": ["prosodyctl check config"], "reload": ["prosodyctl reload"]}),
    "tomcat": Preset(
        "certificateKeystoreFile (certificateKeystoreType PKCS12) is read by the tomcat user "
        "at start; Tomcat does not reread it on its own",
        {"format": "pkcs12", "group": "tomcat", "mode": "0640", "reader": "tomcat",
         "reload": ["systemctl restart tomcat10"]}),
}


def preset_mode_error(name: str, mode: int, widened: bool = False) -> str | None:
    """Why this daemon would refuse a key file with ``mode``, or None. ``widened``: the
    target says the daemon was told to take more (the preset's ``widened_by``)."""
    preset = PRESETS[name]
    if preset.exact_mode is not None and mode != preset.exact_mode:
        return (f"{mode:04o}: {name} refuses any key mode but {preset.exact_mode:04o} "
                f"({preset.why})")
    most = preset.widened_by[2] if widened and preset.widened_by else preset.max_mode
    if most is not None and mode & ~most:
        return f"{mode:04o}: {name} refuses a key file this open ({preset.why})"
    return None

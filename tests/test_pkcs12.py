"""format = pkcs12: a Java keystore, read back by OpenSSL 3 and by Java's own keytool.

The keystore is not reproducible byte for byte (fresh salt and IV each time),
so "unchanged" rests on the state record; these tests check both directions:
nothing rewritten when nothing changed, rewritten when the lineage, the
password or the file itself changed.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, pkcs12

from tests.support.pki import key_matches_cert
from tests.support.site import (
    DEPLOY,
    deploy,
    lineage_bytes,
    mode_of,
    new_version,
    one_line,
    snapshot,
    write_conf,
    write_password,
)
from tests.support.testbed import Certbot

PASSWORD = "correct horse battery staple"


def keystore_conf(site: Path, extra: str = "", password: str = PASSWORD) -> Path:
    pw = write_password(site / "keystore.pass", password)
    return write_conf(site / "le", f"""\
[java]
lineage = mail
path = {site}/out/keystore.p12
format = pkcs12
password_file = {pw}
{extra}
""")


def published_keystore(site: Path) -> Path:
    """Lineage 'mail' deployed to SITE/out/keystore.p12; its path."""
    keystore_conf(site)
    result = deploy(site / "le", "deploy", "--all")
    assert result.returncode == 0, result.stderr
    return site / "out" / "keystore.p12"


def openssl_dump(path: Path, password: str) -> str:
    """The keystore's key and certificates as PEM, read by OpenSSL 3 without -legacy."""
    result = subprocess.run(["openssl", "pkcs12", "-in", str(path), "-passin",
                             f"pass:{password}", "-nodes"], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


def pem_blocks(text: str, label: str) -> list[bytes]:
    return [m.group(0).encode() + b"\n" for m in re.finditer(
        rf"-----BEGIN {label}-----\n.*?-----END {label}-----", text, re.S)]


def test_keystore_holds_the_lineage_key_and_chain_under_modern_encryption(
        site: Path, group: str) -> None:
    keystore_conf(site, f"group = {group}")
    result = deploy(site / "le", "deploy", "--all")
    assert result.returncode == 0, result.stderr
    path = site / "out" / "keystore.p12"
    assert mode_of(path) == 0o640 and path.stat().st_gid == int(
        subprocess.check_output(["getent", "group", group], text=True).split(":")[2])
    dumped = openssl_dump(path, PASSWORD)
    lineage = lineage_bytes(site / "le", "mail")
    (key,) = pem_blocks(dumped, "PRIVATE KEY")
    certs = pem_blocks(dumped, "CERTIFICATE")
    assert certs[0] == lineage["cert"] and b"".join(certs) == lineage["fullchain"]
    assert key_matches_cert(key, certs[0])
    # Parsed again with cryptography: the alias is the lineage, the algorithms PBES2/AES.
    store = pkcs12.load_pkcs12(path.read_bytes(), PASSWORD.encode())
    assert store.cert is not None and store.cert.friendly_name == b"mail"
    info = subprocess.run(["openssl", "pkcs12", "-in", str(path), "-passin",
                           f"pass:{PASSWORD}", "-info", "-noout"], capture_output=True,
                          text=True, timeout=30)
    assert "AES-256-CBC" in info.stderr and "PBKDF2" in info.stderr, info.stderr
    assert "RC2" not in info.stderr and "3DES" not in info.stderr
    wrong = subprocess.run(["openssl", "pkcs12", "-in", str(path), "-passin", "pass:wrong",
                            "-nodes"], capture_output=True, timeout=30)
    assert wrong.returncode != 0


@pytest.mark.skipif(shutil.which("keytool") is None, reason="no Java keytool on this machine")
def test_java_keytool_reads_the_keystore(site: Path) -> None:
    published_keystore(site)
    listing = subprocess.run(
        ["keytool", "-list", "-v", "-storetype", "PKCS12", "-keystore",
         str(site / "out" / "keystore.p12"), "-storepass:file", str(site / "keystore.pass")],
        capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stdout + listing.stderr
    assert "Alias name: mail" in listing.stdout
    assert "Entry type: PrivateKeyEntry" in listing.stdout
    assert "Certificate chain length: 2" in listing.stdout
    leaf = x509.load_pem_x509_certificate(lineage_bytes(site / "le", "mail")["cert"])
    assert f"Serial number: {leaf.serial_number:x}" in listing.stdout


def test_unchanged_keystore_is_left_alone_without_importing_cryptography(site: Path) -> None:
    path = published_keystore(site)
    before = path.stat()
    env = dict(os.environ, RENEWED_LINEAGE=str(site / "le" / "live" / "mail"),
               PYTHONPROFILEIMPORTTIME="1")
    hook = subprocess.run([DEPLOY], capture_output=True, text=True, timeout=60, env=env)
    assert hook.returncode == 0, hook.stderr
    assert "[java] unchanged" in hook.stdout
    assert "cryptography" not in hook.stderr  # the import profile of the whole run
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    status = deploy(site / "le", "status")
    assert status.returncode == 0 and "in sync" in status.stdout, status.stdout


@pytest.mark.parametrize("change", ["new-version", "password", "tampered"])
def test_keystore_is_rewritten_when_what_went_into_it_changed(site: Path, change: str) -> None:
    path = published_keystore(site)
    password = PASSWORD
    if change == "new-version":
        new_version(site)
    elif change == "password":
        password = "another one"
        keystore_conf(site, password=password)
    else:
        with open(path, "ab") as f:
            f.write(b"\0")
    result = deploy(site / "le", "deploy", "--all")
    assert result.returncode == 0, result.stderr
    assert "[java] published" in result.stdout
    certs = pem_blocks(openssl_dump(path, password), "CERTIFICATE")
    assert certs[0] == lineage_bytes(site / "le", "mail")["cert"]


def test_failed_check_puts_the_previous_keystore_back(site: Path) -> None:
    path = published_keystore(site)
    first = path.read_bytes()
    new_version(site)
    keystore_conf(site, "check = false")
    result = deploy(site / "le", "deploy", "--all")
    assert result.returncode == 1
    assert "restored the previous content" in one_line(result)
    assert path.read_bytes() == first
    # and the record still describes what is on disk: a later run publishes again
    keystore_conf(site)
    again = deploy(site / "le", "deploy", "--all")
    assert again.returncode == 0 and "[java] published" in again.stdout, again.stderr


@pytest.mark.parametrize("problem,message", [
    ("no-key", "[java] password_file: missing; a pkcs12 target needs"),
    ("world-readable", "mode 0644 lets others read it"),
    ("symlink", "is a symlink; refusing to follow it"),
    ("empty", "put the password on the first line"),
])
def test_password_file_problems_are_config_errors_one_line_and_nothing_is_written(
        site: Path, problem: str, message: str) -> None:
    keystore_conf(site)
    pw = site / "keystore.pass"
    if problem == "no-key":
        conf = site / "le" / "atomic-deploy.conf"
        conf.write_text("".join(line + "\n" for line in conf.read_text().splitlines()
                                if not line.startswith("password_file")))
    elif problem == "world-readable":
        pw.chmod(0o644)
    elif problem == "symlink":
        real = site / "real.pass"
        real.write_text(PASSWORD)
        real.chmod(0o600)
        pw.unlink()
        pw.symlink_to(real)
    else:
        pw.write_text("\n")
    before = snapshot(site / "out")
    result = deploy(site / "le", "deploy", "--all")
    assert result.returncode == 2  # a config error, as check-config says it
    assert message in one_line(result)
    assert snapshot(site / "out") == before
    if problem != "no-key":
        checked = deploy(site / "le", "check-config")
        assert checked.returncode == 2 and message in one_line(checked)


def test_keystore_follows_certbot_renewals_through_the_hook(certbot: Certbot,
                                                          open_tmp: Path) -> None:
    out = open_tmp / "out"
    out.mkdir(mode=0o755)
    certbot.config_dir.mkdir(parents=True)
    pw = write_password(open_tmp / "keystore.pass", PASSWORD)
    write_conf(certbot.config_dir, f"""\
[java]
lineage = java
path = {out}/java.p12
format = pkcs12
password_file = {pw}
""")
    certbot.extra_env["PATH"] = f"{Path(DEPLOY).parent}:{os.environ['PATH']}"
    certbot.certonly("java", ["java.example.org"], "--deploy-hook", "certbot-atomic-deploy")
    serials = []
    for _ in range(2):
        certbot.renew("--force-renewal")
        live = certbot.config_dir / "live" / "java"
        # load_key_and_certificates: what every row's cryptography has (load_pkcs12 is 36+)
        key, cert, _cas = pkcs12.load_key_and_certificates((out / "java.p12").read_bytes(),
                                                           PASSWORD.encode())
        assert cert is not None and key is not None
        assert cert.public_bytes(Encoding.PEM) == (live / "cert.pem").read_bytes()
        serials.append(cert.serial_number)
    assert len(set(serials)) == 2

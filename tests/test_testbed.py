"""The foundation: real certbot against real pebble, issuing and renewing a lineage."""
from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.support.testbed import Certbot, Pebble

pytestmark = pytest.mark.root  # pebble, certbot


def _public_der(key_pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(key_pem, password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_issue_two_names_then_force_renew_gives_second_version(certbot: Certbot) -> None:
    names = ["mail.example.org", "smtp.example.org"]
    certbot.certonly("mail", names)
    certbot.renew("--force-renewal")

    archive = certbot.archive("mail")
    assert sorted(p.name for p in archive.iterdir()) == sorted(
        f"{kind}{n}.pem" for kind in ("cert", "chain", "fullchain", "privkey") for n in (1, 2))

    live = certbot.live("mail")
    for kind in ("cert", "chain", "fullchain", "privkey"):
        link = live / f"{kind}.pem"
        assert link.is_symlink()
        assert os.readlink(link) == f"../../archive/mail/{kind}2.pem"

    cert = x509.load_pem_x509_certificate((live / "cert.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(san.get_values_for_type(x509.DNSName)) == names
    assert _public_der((live / "privkey.pem").read_bytes()) == cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    first = x509.load_pem_x509_certificate((archive / "cert1.pem").read_bytes())
    assert first.serial_number != cert.serial_number
    # certbot writes new keys 0600: the baseline the permission plugin starts from
    assert stat.S_IMODE((archive / "privkey2.pem").stat().st_mode) == 0o600


def test_leaf_chains_to_pebble_root(certbot: Certbot, pebble: Pebble, tmp_path: Path) -> None:
    # OpenSSL judges, not the cryptography of this row (nor our own chain check).
    certbot.certonly("chain", ["chain.example.org"])
    root = tmp_path / "root.pem"
    root.write_bytes(pebble.root_pem())
    live = certbot.live("chain")
    verified = subprocess.run(["openssl", "verify", "-CAfile", str(root), "-untrusted",
                               str(live / "chain.pem"), str(live / "cert.pem")],
                              capture_output=True, text=True)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.strip().endswith(": OK")


def test_pebble_stop_ends_exactly_its_process(tmp_path: Path) -> None:
    server = Pebble.start(tmp_path / "own-pebble")
    assert server.process is not None
    pid = server.process.pid
    server.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)

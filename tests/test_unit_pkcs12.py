"""PKCS#12 keystores on made-up material, by both writers, read back by others.

Unit tier. ``keystore`` uses cryptography's own writer where it can be told
PBES2/AES (38 and newer) and :func:`pbes2_keystore` before that; both are run
here whatever the installed release, and each result is read by cryptography's
loader, by OpenSSL (which checks the MAC) and, where Java is installed, keytool.
"""
from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cryptography
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from certbot_atomic_deploy.pkcs12 import (
    KDF_ROUNDS,
    keystore,
    native_writer_available,
    pbes2_keystore,
)
from tests.support.pki import make_chain, material, new_key

PASSWORD = b"s3cret-pass/word+24"  # printable ASCII: what config.read_password allows


def _native(key: Any, chain: list[x509.Certificate], password: bytes) -> bytes:
    if not native_writer_available():
        pytest.skip(f"cryptography {cryptography.__version__} cannot write PBES2 keystores")
    return keystore(material(key, chain, "mail"), password)


def _fallback(key: Any, chain: list[x509.Certificate], password: bytes) -> bytes:
    return pbes2_keystore(b"mail", key, chain, password)


WRITERS: dict[str, Callable[[Any, list[x509.Certificate], bytes], bytes]] = {
    "native": _native, "fallback": _fallback}


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize("kind", ["ec", "rsa", "ed25519"])
def test_the_keystore_holds_the_key_and_chain_under_the_password(writer: str, kind: str
                                                                 ) -> None:
    key, chain = make_chain(["mail.example.org"], key=new_key(kind))
    data = WRITERS[writer](key, chain, PASSWORD)
    got_key, got_cert, got_cas = pkcs12.load_key_and_certificates(data, PASSWORD)
    assert got_key is not None and got_cert == chain[0] and list(got_cas) == chain[1:]
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert got_key.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_wrong_password_opens_nothing(writer: str) -> None:
    key, chain = make_chain(["mail.example.org"])
    data = WRITERS[writer](key, chain, PASSWORD)
    with pytest.raises(ValueError):
        pkcs12.load_key_and_certificates(data, b"wrong")


def _openssl_info(path: Path, password: bytes) -> subprocess.CompletedProcess[str]:
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command on this machine")
    return subprocess.run(["openssl", "pkcs12", "-info", "-noout", "-in", str(path),
                           "-passin", "stdin"], input=password.decode() + "\n",
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_openssl_reads_pbes2_aes_and_a_sha256_mac_without_legacy(writer: str,
                                                                 tmp_path: Path) -> None:
    key, chain = make_chain(["mail.example.org"])
    path = tmp_path / "k.p12"
    path.write_bytes(WRITERS[writer](key, chain, PASSWORD))
    info = _openssl_info(path, PASSWORD)
    assert info.returncode == 0, info.stderr
    assert "MAC: sha256, Iteration " in info.stderr
    if writer == "fallback":  # cryptography's writer keeps its 2048 MAC rounds
        assert f"MAC: sha256, Iteration {KDF_ROUNDS}" in info.stderr
    scheme = f"PBES2, PBKDF2, AES-256-CBC, Iteration {KDF_ROUNDS}, PRF hmacWithSHA256"
    assert info.stderr.count(scheme) == 2, info.stderr  # the certificates and the key
    assert "3DES" not in info.stderr and "RC2" not in info.stderr


def test_a_tampered_keystore_fails_openssls_mac_check(tmp_path: Path) -> None:
    key, chain = make_chain(["mail.example.org"])
    data = bytearray(_fallback(key, chain, PASSWORD))
    data[len(data) // 2] ^= 0x01  # inside the authenticated content
    path = tmp_path / "k.p12"
    path.write_bytes(bytes(data))
    info = _openssl_info(path, PASSWORD)
    assert info.returncode != 0
    assert "Mac verify error" in info.stderr, info.stderr


@pytest.mark.skipif(shutil.which("keytool") is None, reason="no Java keytool on this machine")
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_java_sees_one_private_key_entry_named_after_the_lineage(writer: str,
                                                                 tmp_path: Path) -> None:
    key, chain = make_chain(["mail.example.org"], key=new_key("rsa"))
    path = tmp_path / "k.p12"
    path.write_bytes(WRITERS[writer](key, chain, PASSWORD))
    listed = subprocess.run(["keytool", "-list", "-v", "-storetype", "PKCS12", "-keystore",
                             str(path), "-storepass", PASSWORD.decode()],
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "Alias name: mail" in listed.stdout
    assert "Entry type: PrivateKeyEntry" in listed.stdout
    assert "Certificate chain length: 2" in listed.stdout

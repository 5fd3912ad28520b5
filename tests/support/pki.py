"""Real keys and certificate chains (cryptography), and the bundles built from them.

Material certbot would never issue (expired, mismatched, forged, other key types)
is made here; what certbot issues comes from the real certbot (:mod:`.testbed`).
"""
from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from typing import Any, NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from certbot_atomic_deploy.pem import Material, parse_blocks


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, cn)])


def new_key(kind: str = "ec") -> Any:
    """A fresh private key: "ec" (P-256), "rsa" (2048) or "ed25519"."""
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def issue(subject: str, issuer: str, public_key: Any, signer: Any, *, ca: bool,
          names: Sequence[str] = (), ips: Sequence[str] = (),
          valid: tuple[datetime.timedelta, datetime.timedelta] = (
              datetime.timedelta(days=-1), datetime.timedelta(days=90)),
          path_length: int | None = None, strict: bool = False) -> x509.Certificate:
    """One certificate: ``subject`` (a common name) issued by ``issuer``, signed by
    ``signer``, valid from now + ``valid[0]`` to now + ``valid[1]``.

    ``strict`` adds what a strict verifier (Python 3.13's VERIFY_X509_STRICT) wants:
    key identifiers, and key usage (a CA) or extended key usage (a server).
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject))
               .issuer_name(_name(issuer)).public_key(public_key)
               .serial_number(x509.random_serial_number())
               .not_valid_before(now + valid[0]).not_valid_after(now + valid[1])
               .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length),
                              critical=True))
    if names or ips:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [*(x509.DNSName(n) for n in names),
             *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips)]), critical=False)
    if strict:
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False).add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
            critical=False)
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        else:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False)
    digest = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(signer, digest)


def make_chain(names: list[str], *, days_valid: tuple[int, int] = (-1, 90),
               key: ec.EllipticCurvePrivateKey | None = None, issuer_kind: str = "ec"
               ) -> tuple[ec.EllipticCurvePrivateKey, list[x509.Certificate]]:
    """A real leaf (for ``names``) and intermediate, both issued by a fresh root.

    ``issuer_kind`` is the key type of root and intermediate ("ec", "rsa",
    "ed25519"). Every chain uses the same names, so a leaf of one chain with the
    intermediate of another names its issuer right but was signed by another key.
    """
    root_key = new_key(issuer_kind)
    inter_key = new_key(issuer_kind)
    leaf_key = key or ec.generate_private_key(ec.SECP256R1())
    days = datetime.timedelta(days=1)
    inter = issue("test intermediate", "test root", inter_key.public_key(), root_key, ca=True,
                  valid=(-10 * days, 365 * days))
    leaf = issue(names[0], "test intermediate", leaf_key.public_key(), inter_key, ca=False,
                 names=names, valid=(days_valid[0] * days, days_valid[1] * days))
    return leaf_key, [leaf, inter]


def pem_of(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def key_matches_cert(key_pem: bytes, cert_pem: bytes) -> bool:
    key = serialization.load_pem_private_key(key_pem, password=None)
    cert = x509.load_pem_x509_certificate(cert_pem)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(key.public_key().public_bytes(serialization.Encoding.DER, spki)
                == cert.public_key().public_bytes(serialization.Encoding.DER, spki))


class Pair(NamedTuple):
    """One version's bytes: the key, the leaf, the intermediates."""

    key: bytes
    cert: bytes   # leaf only
    chain: bytes  # intermediates

    @property
    def fullchain(self) -> bytes:
        return self.cert + self.chain


def make_pair(names: list[str]) -> Pair:
    key, chain = make_chain(names)
    pems = [c.public_bytes(serialization.Encoding.PEM) for c in chain]
    return Pair(pem_of(key), pems[0], b"".join(pems[1:]))


def material(key: Any, chain: list[x509.Certificate], lineage: str = "mail") -> Material:
    """A lineage's material as pem.read_lineage returns it, made in memory (version 1)."""
    pems = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
    return Material(lineage=lineage, version=1, key=parse_blocks(pem_of(key), "key")[0],
                    chain=tuple(parse_blocks(pems, "fullchain")),
                    sources={"privkey": "privkey1.pem", "cert": "cert1.pem",
                             "fullchain": "fullchain1.pem"})

"""Check a lineage's material before any byte of it is published.

The only module of the deploy hook that imports cryptography; it is imported
only when something is to be written (the "nothing changed" path skips it).

Checks, each failing with one line that names the file:
- the key parses, unencrypted, and its public key is the leaf certificate's;
- each certificate in the chain is issued (and signed) by the next one;
- the leaf is valid now (not before its notBefore, not after its notAfter);
- every domain glob a target asks for is covered by a name of the leaf.
"""
from __future__ import annotations

import datetime
import fnmatch
import itertools
from collections.abc import Iterable
from typing import NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from certbot_atomic_deploy.errors import ValidationError
from certbot_atomic_deploy.pem import Material

_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class CertInfo(NamedTuple):
    serial: str
    not_before: datetime.datetime
    not_after: datetime.datetime
    names: tuple[str, ...]


def leaf_info(cert_pem: bytes, where: str) -> CertInfo:
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise ValidationError(f"{where}: the certificate does not parse ({exc})") from None
    return _info(cert)


def _info(cert: x509.Certificate) -> CertInfo:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [*san.get_values_for_type(x509.DNSName),
                 *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]
    except x509.ExtensionNotFound:
        names = [str(a.value) for a in cert.subject.get_attributes_for_oid(
            x509.oid.NameOID.COMMON_NAME)]
    return CertInfo(serial=f"{cert.serial_number:x}", not_before=_utc(cert, "not_valid_before"),
                    not_after=_utc(cert, "not_valid_after"), names=tuple(names))


def _utc(cert: x509.Certificate, field: str) -> datetime.datetime:
    # cryptography >= 42 has the *_utc properties; certbot 2.1 needs an older release.
    aware = getattr(cert, field + "_utc", None)
    if isinstance(aware, datetime.datetime):
        return aware
    naive: datetime.datetime = getattr(cert, field)
    return naive.replace(tzinfo=datetime.timezone.utc)


def covers(names: Iterable[str], pattern: str) -> bool:
    """Whether a glob (``mail.example.org``, ``*.example.org``) matches one of the names."""
    pattern = pattern.lower()
    return any(fnmatch.fnmatchcase(n.lower(), pattern) or n.lower() == pattern for n in names)


def validate(material: Material, now: datetime.datetime | None = None) -> CertInfo:
    """Raise ValidationError unless the material is fit to publish; return the leaf's info.

    Depends on the lineage only, so a run does it once per lineage however many
    targets take it; :func:`require_covered` is the per-target part.
    """
    src = material.sources
    try:
        key = serialization.load_pem_private_key(material.key.text, password=None)
    except TypeError:
        raise ValidationError(f"{src['privkey']}: the key is encrypted; daemons need it "
                              "unencrypted (decrypt it with 'openssl pkey')") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValidationError(f"{src['privkey']}: the key does not parse ({exc})") from None
    try:
        chain = [x509.load_pem_x509_certificate(b.text) for b in material.chain]
    except ValueError as exc:
        raise ValidationError(f"{src['fullchain']}: a certificate does not parse ({exc})") from None
    leaf = chain[0]
    if key.public_key().public_bytes(*_SPKI) != leaf.public_key().public_bytes(*_SPKI):
        raise ValidationError(f"{src['privkey']}: the key does not match the certificate "
                              f"{src['cert']} (refusing to publish a mismatched pair)")
    for i, (child, parent) in enumerate(itertools.pairwise(chain)):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise ValidationError(
                f"{src['fullchain']}: certificate {i + 1} ({child.subject.rfc4514_string()}) "
                f"is not issued by certificate {i + 2} ({parent.subject.rfc4514_string()}): "
                f"{exc or 'bad signature'}") from None
    info = _info(leaf)
    moment = now or datetime.datetime.now(datetime.timezone.utc)
    if moment < info.not_before:
        raise ValidationError(f"{src['cert']}: not valid before {info.not_before:%Y-%m-%d %H:%M} "
                              "UTC (check the clock)")
    if moment > info.not_after:
        raise ValidationError(f"{src['cert']}: expired {info.not_after:%Y-%m-%d %H:%M} UTC "
                              "(renew it: certbot renew --cert-name " + material.lineage + ")")
    return info


def require_covered(info: CertInfo, domains: Iterable[str], where: str) -> None:
    """Raise ValidationError unless every domain glob is covered by a name of the leaf."""
    for pattern in domains:
        if not covers(info.names, pattern):
            raise ValidationError(f"{where}: does not cover '{pattern}' (it names "
                                  f"{', '.join(info.names)})")

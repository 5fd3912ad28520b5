"""Check a lineage's material before any byte of it is published.

The only module of the deploy hook that imports cryptography; it is imported
only when something is to be written (the "nothing changed" path skips it).

Checks, each failing with one line that names the file:
- the key parses, unencrypted, and its public key is the leaf certificate's;
- each certificate in the chain is issued (and signed) by the next one:
  ``Certificate.verify_directly_issued_by`` where cryptography has it (40 and
  newer), else :func:`check_signature`, the same check built from the calls
  that cryptography 3.4 already has (Ubuntu 22.04 ships 3.4.8, RHEL 9 36.0.1,
  Debian 12 38.0.4);
- the leaf is a server's certificate: not a CA (basicConstraints CA:TRUE), and
  naming its hosts in a subjectAltName (what every ACME CA issues);
- the leaf is valid now (not before its notBefore, not after its notAfter);
- every domain glob a target asks for is covered by a name of the leaf.
"""
from __future__ import annotations

import datetime
import fnmatch
from collections.abc import Iterable
from typing import NamedTuple

import cryptography
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa

from certbot_atomic_deploy.pem import Material
from daemon_keys.errors import ValidationError

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
    """Whether a glob (``mail.example.org``, ``*.example.org``) matches one of the names,
    or a wildcard name of the certificate covers the host it names (RFC 6125: ``*.ex.org``
    covers ``a.ex.org``, not ``a.b.ex.org`` nor ``ex.org``)."""
    pattern = pattern.lower()
    return any(fnmatch.fnmatchcase(n.lower(), pattern) or n.lower() == pattern
               or _wildcard_covers(n.lower(), pattern) for n in names)


def _wildcard_covers(name: str, host: str) -> bool:
    if not name.startswith("*.") or any(c in host for c in "*?["):
        return False
    label, _, rest = host.partition(".")
    return bool(label) and rest == name[2:]


def validate(material: Material, now: datetime.datetime | None = None,
             issuers: tuple[bytes, ...] | None = None) -> CertInfo:
    """Raise ValidationError unless the material is fit to publish; return the leaf's info.

    Depends on the lineage only (and the run's ``issuers`` pin: the chain must end at
    one of those CA certificates), so a run does it once per lineage however many
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
    for i, (child, parent) in enumerate(zip(chain, chain[1:])):
        try:
            verify_issued_by(child, parent)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as exc:
            raise ValidationError(
                f"{src['fullchain']}: certificate {i + 1} ({child.subject.rfc4514_string()}) "
                f"is not issued by certificate {i + 2} ({parent.subject.rfc4514_string()}): "
                f"{str(exc) or 'its signature does not verify with the key of certificate '}"
                f"{'' if str(exc) else i + 2}") from None
    if issuers is not None:
        _require_pinned(chain[-1], issuers, src["fullchain"])
    _require_server_leaf(leaf, src["cert"])
    info = _info(leaf)
    moment = now or datetime.datetime.now(datetime.timezone.utc)
    if moment < info.not_before:
        raise ValidationError(f"{src['cert']}: not valid before {info.not_before:%Y-%m-%d %H:%M} "
                              "UTC (check the clock)")
    if moment > info.not_after:
        raise ValidationError(f"{src['cert']}: expired {info.not_after:%Y-%m-%d %H:%M} UTC "
                              "(renew it: certbot renew --cert-name " + material.lineage + ")")
    return info


def _require_server_leaf(leaf: x509.Certificate, where: str) -> None:
    try:
        constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is not None and constraints.ca:
        raise ValidationError(f"{where}: a CA certificate (basicConstraints CA:TRUE), not a "
                              "server's; refusing to publish it as one")
    try:
        leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        raise ValidationError(f"{where}: no subjectAltName, so no client can match it to "
                              "a host name; refusing to publish it (every ACME CA issues "
                              "one)") from None


def _require_pinned(top: x509.Certificate, issuers: tuple[bytes, ...], where: str) -> None:
    """The chain's last certificate is one of the pinned CAs, or issued by one."""
    for pem in issuers:
        ca = x509.load_pem_x509_certificate(pem)
        if ca == top:
            return
        try:
            verify_issued_by(top, ca)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            continue
        return
    raise ValidationError(f"{where}: the chain ends at {top.subject.rfc4514_string()} "
                          f"(issuer {top.issuer.rfc4514_string()}), which none of the "
                          f"{len(issuers)} pinned issuers issued ([defaults] issuers); "
                          "refusing to publish it")


def verify_issued_by(child: x509.Certificate, parent: x509.Certificate) -> None:
    """Raise unless ``parent`` issued ``child``: its subject is the child's issuer and its key
    made the child's signature. cryptography's own check where it has one (40 and newer)."""
    native = getattr(child, "verify_directly_issued_by", None)
    if native is not None:
        native(parent)
    else:
        check_signature(child, parent)


_RSA_PSS_OID = "1.2.840.113549.1.1.10"


def check_signature(child: x509.Certificate, parent: x509.Certificate) -> None:
    """The issuer check for cryptography before 40, from calls that 3.4 has.

    Raises ValueError (issuer name), TypeError (a key type that cannot sign
    certificates) or InvalidSignature, as ``verify_directly_issued_by`` does.
    """
    if child.issuer != parent.subject:
        raise ValueError("Issuer certificate subject does not match certificate issuer.")
    if child.signature_algorithm_oid.dotted_string == _RSA_PSS_OID:
        # The PSS salt length and MGF hash are in parameters that cryptography exposes
        # only from 41 on (signature_algorithm_parameters); no CA on the web signs with PSS.
        raise ValueError(f"cryptography {cryptography.__version__} cannot check an RSASSA-PSS "
                         "signature (a release with Certificate.verify_directly_issued_by can)")
    key = parent.public_key()
    signature, data = child.signature, child.tbs_certificate_bytes
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        key.verify(signature, data)
        return
    digest = child.signature_hash_algorithm
    if digest is None:
        raise TypeError("the signature names no hash algorithm")
    if isinstance(key, rsa.RSAPublicKey):
        key.verify(signature, data, padding.PKCS1v15(), digest)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, data, ec.ECDSA(digest))
    elif isinstance(key, dsa.DSAPublicKey):
        key.verify(signature, data, digest)
    else:
        raise TypeError(f"an issuer key of type {type(key).__name__} cannot sign certificates")


def require_covered(info: CertInfo, domains: Iterable[str], where: str) -> None:
    """Raise ValidationError unless every domain glob is covered by a name of the leaf."""
    for pattern in domains:
        if not covers(info.names, pattern):
            raise ValidationError(f"{where}: does not cover '{pattern}' (it names "
                                  f"{', '.join(info.names)})")

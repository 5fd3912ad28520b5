"""DANE TLSA records (RFC 6698, RFC 7671; RFC 7672 for SMTP) of a lineage's certificates.

Imports no certbot; cryptography (a certificate's SubjectPublicKeyInfo) only when a record
is computed, never on the hook's path. A record is ``usage selector matching-type data``:

- usage 3 (DANE-EE) names the server's own certificate, usage 2 (DANE-TA) a CA
  certificate the server presents in its chain (RFC 7671 section 5); usages 0 and 1
  (PKIX) are not for SMTP (RFC 7672 section 3.1.3) and match nothing here;
- selector 0: the whole certificate, 1: its SubjectPublicKeyInfo (survives a renewal
  that keeps the key, ``--reuse-key``);
- matching type 0: the bytes themselves, 1: their SHA-256, 2: their SHA-512.

``3 1 1`` (the key's digest) and ``2 1 1`` (the issuing CA's) are what mail operators
publish, and what :func:`records_for` gives.
"""
from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from typing import NamedTuple

from certbot_atomic_deploy.pem import PemBlock

DANE_TA, DANE_EE = 2, 3
SELECTORS = (0, 1)
MATCHING_TYPES = (0, 1, 2)


class Tlsa(NamedTuple):
    usage: int
    selector: int
    mtype: int
    data: bytes

    def text(self) -> str:
        """The record's data as a zone file writes it."""
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()}"


def der_of(block: PemBlock) -> bytes:
    """A CERTIFICATE block's DER bytes."""
    body = b"".join(line for line in block.text.splitlines() if not line.startswith(b"-----"))
    return base64.b64decode(body)


def association(cert_der: bytes, selector: int, mtype: int) -> bytes:
    """The certificate association data for ``selector`` and matching type ``mtype``."""
    if selector == 0:
        selected = cert_der
    elif selector == 1:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        selected = x509.load_der_x509_certificate(cert_der).public_key().public_bytes(
            Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    else:
        raise ValueError(f"selector {selector} is not one of 0, 1")
    if mtype == 0:
        return selected
    if mtype == 1:
        return hashlib.sha256(selected).digest()
    if mtype == 2:
        return hashlib.sha512(selected).digest()
    raise ValueError(f"matching type {mtype} is not one of 0, 1, 2")


def matches(record: Tlsa, chain: Sequence[bytes]) -> bool:
    """Whether ``record`` vouches for a server presenting ``chain`` (DER, leaf first)."""
    if record.selector not in SELECTORS or record.mtype not in MATCHING_TYPES:
        return False
    if record.usage == DANE_EE:
        candidates = chain[:1]
    elif record.usage == DANE_TA:
        candidates = chain[1:]
    else:
        return False
    return any(association(der, record.selector, record.mtype) == record.data
               for der in candidates)


def records_for(chain: Sequence[bytes]) -> list[Tlsa]:
    """``3 1 1`` for the leaf, and ``2 1 1`` for each CA certificate in the chain."""
    records = [Tlsa(DANE_EE, 1, 1, association(chain[0], 1, 1))]
    records += [Tlsa(DANE_TA, 1, 1, association(der, 1, 1)) for der in chain[1:]]
    return records

"""PKCS#12 keystores for Java daemons: the lineage's key and full chain under a password.

Imports cryptography, so like :mod:`.validate` it is imported only when a
``format = pkcs12`` target is actually written.

The keystore holds one private-key entry, aliased by the lineage name (Tomcat's
``certificateKeyAlias``, Jetty's ``certAlias``), with the leaf and its issuers.
Key and certificates are encrypted with PBES2 (PBKDF2-HMAC-SHA256, AES-256-CBC)
and the file's MAC is HMAC-SHA256: what OpenSSL 3 reads without ``-legacy`` and
Java reads since 8u301, 11.0.12 and 17. Never the RC2/3DES of older tools.

Two ways to the same file, chosen by what the installed cryptography offers:

- cryptography 38 and newer: its own writer, told exactly those algorithms
  (``PrivateFormat.PKCS12.encryption_builder()``);
- older releases (Ubuntu 22.04 ships 3.4.8, RHEL 9 36.0.1), whose writer only
  knows 3DES: :func:`pbes2_keystore` lays out the same structure (RFC 7292) in
  DER here, from primitives 3.4 has (PBKDF2HMAC, AES-CBC, HMAC, PKCS#8 export).
  The MAC key comes from RFC 7292's own KDF (appendix B.2), computed with
  hashlib, with as many rounds as the encryption so the MAC is no cheaper a
  way to guess the password.

A keystore is not reproducible (fresh salts and IVs each time), so whether a
target is current is decided on :func:`.pem.keystore_fingerprint` of what went
into it, kept in the state record with the sha256 of the bytes written.
"""
from __future__ import annotations

import hashlib
import hmac
import os
from typing import TYPE_CHECKING, Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from certbot_atomic_deploy.pem import Material
from daemon_keys.errors import ValidationError

KDF_ROUNDS = 100_000  # pem.KEYSTORE_TAG names these choices: change it with them
_KEY_TYPES = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey,
              ed448.Ed448PrivateKey, dsa.DSAPrivateKey)
if TYPE_CHECKING:
    KeystoreKey = Union[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey,
                        ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey, dsa.DSAPrivateKey]
_SALT_BYTES = 16  # OpenSSL 3's PBKDF2 and MAC salts (cryptography's writer salts its MAC with 8)


def native_writer_available() -> bool:
    """Whether this cryptography writes PBES2/AES keystores itself (38 and newer)."""
    return hasattr(serialization.PrivateFormat, "PKCS12")


def keystore(material: Material, password: bytes) -> bytes:
    """The PKCS#12 bytes for a validated lineage (see :func:`.validate.validate`)."""
    key = serialization.load_pem_private_key(material.key.text, password=None)
    if not isinstance(key, _KEY_TYPES):
        raise ValidationError(f"{material.sources['privkey']}: a {type(key).__name__} cannot go "
                              "into a PKCS#12 keystore")
    certs = [x509.load_pem_x509_certificate(b.text) for b in material.chain]
    name = material.lineage.encode()
    if not native_writer_available():
        return pbes2_keystore(name, key, certs, password)
    from cryptography.hazmat.primitives.serialization import pkcs12

    encryption = (serialization.PrivateFormat.PKCS12.encryption_builder()
                  .kdf_rounds(KDF_ROUNDS)
                  .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
                  .hmac_hash(hashes.SHA256())
                  .build(password))
    return pkcs12.serialize_key_and_certificates(name, key, certs[0], certs[1:] or None,
                                                 encryption)


# -- the same keystore from primitives, for cryptography before 38

# Object identifiers (RFC 7292, RFC 8018, RFC 5652, NIST)
_DATA = "1.2.840.113549.1.7.1"
_ENCRYPTED_DATA = "1.2.840.113549.1.7.6"
_SHROUDED_KEY_BAG = "1.2.840.113549.1.12.10.1.2"
_CERT_BAG = "1.2.840.113549.1.12.10.1.3"
_X509_CERTIFICATE = "1.2.840.113549.1.9.22.1"
_FRIENDLY_NAME = "1.2.840.113549.1.9.20"
_LOCAL_KEY_ID = "1.2.840.113549.1.9.21"
_PBES2 = "1.2.840.113549.1.5.13"
_PBKDF2 = "1.2.840.113549.1.5.12"
_HMAC_SHA256 = "1.2.840.113549.2.9"
_AES256_CBC = "2.16.840.1.101.3.4.1.42"
_SHA256 = "2.16.840.1.101.3.4.2.1"


def _tlv(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content


def _seq(*items: bytes) -> bytes:
    return _tlv(0x30, b"".join(items))


def _set(*items: bytes) -> bytes:
    return _tlv(0x31, b"".join(sorted(items)))  # DER orders a SET OF by encoding


def _int(value: int) -> bytes:
    return _tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _octets(value: bytes) -> bytes:
    return _tlv(0x04, value)


def _explicit0(content: bytes) -> bytes:
    return _tlv(0xA0, content)


def _oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return _tlv(0x06, bytes(out))


def _null() -> bytes:
    return b"\x05\x00"


def _pbes2_encrypt(plaintext: bytes, password: bytes) -> tuple[bytes, bytes]:
    """(AlgorithmIdentifier, ciphertext): PBKDF2-HMAC-SHA256 and AES-256-CBC (RFC 8018)."""
    salt, iv = os.urandom(_SALT_BYTES), os.urandom(16)
    kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=salt, iterations=KDF_ROUNDS)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(kdf.derive(password)), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    algorithm = _seq(_oid(_PBES2), _seq(
        _seq(_oid(_PBKDF2), _seq(_octets(salt), _int(KDF_ROUNDS), _int(32),
                                 _seq(_oid(_HMAC_SHA256), _null()))),
        _seq(_oid(_AES256_CBC), _octets(iv))))
    return algorithm, ciphertext


def pkcs12_kdf(password: bytes, salt: bytes, purpose: int, rounds: int, size: int) -> bytes:
    """RFC 7292 appendix B.2 with SHA-256 (u = 32, v = 64): the MAC key when purpose is 3.

    ``password`` is as the user typed it; the KDF takes it as a BMPString
    (UTF-16BE with two zero bytes at the end).
    """
    v = 64  # SHA-256's block size; its output (u) is 32 bytes
    bmp = password.decode("utf-8").encode("utf-16-be") + b"\0\0"

    def fill(data: bytes) -> bytes:
        if not data:
            return b""
        count = v * ((len(data) + v - 1) // v)
        return (data * (count // len(data) + 1))[:count]

    diversifier = bytes([purpose]) * v
    block = bytearray(fill(salt) + fill(bmp))
    out = b""
    while len(out) < size:
        digest = hashlib.sha256(diversifier + bytes(block)).digest()
        for _ in range(rounds - 1):
            digest = hashlib.sha256(digest).digest()
        out += digest
        b = int.from_bytes(fill(digest)[:v], "big") + 1
        for j in range(0, len(block), v):
            chunk = (int.from_bytes(block[j:j + v], "big") + b) % (1 << (8 * v))
            block[j:j + v] = chunk.to_bytes(v, "big")
    return out[:size]


def pbes2_keystore(name: bytes, key: KeystoreKey, certs: list[x509.Certificate],
                   password: bytes) -> bytes:
    """A PKCS#12 file as :func:`keystore` asks cryptography 38+ for, laid out here (RFC 7292).

    One shrouded key bag and one cert bag per certificate; the key and the leaf
    carry the alias (friendlyName) and a shared localKeyId, the SHA-1 of the
    leaf, as OpenSSL and Java pair them.
    """
    leaf_der = certs[0].public_bytes(serialization.Encoding.DER)
    bag_attributes = _set(
        _seq(_oid(_FRIENDLY_NAME), _set(_tlv(0x1E, name.decode("utf-8").encode("utf-16-be")))),
        _seq(_oid(_LOCAL_KEY_ID), _set(_octets(hashlib.sha1(leaf_der).digest()))))  # noqa: S324
    cert_bags = []
    for i, cert in enumerate(certs):
        der = cert.public_bytes(serialization.Encoding.DER)
        bag = _seq(_oid(_X509_CERTIFICATE), _explicit0(_octets(der)))
        attrs = (bag_attributes,) if i == 0 else ()
        cert_bags.append(_seq(_oid(_CERT_BAG), _explicit0(bag), *attrs))
    cert_algorithm, cert_ciphertext = _pbes2_encrypt(_seq(*cert_bags), password)
    encrypted_certs = _seq(_oid(_ENCRYPTED_DATA), _explicit0(_seq(
        _int(0), _seq(_oid(_DATA), cert_algorithm, _tlv(0x80, cert_ciphertext)))))
    pkcs8 = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    key_algorithm, key_ciphertext = _pbes2_encrypt(pkcs8, password)
    key_bag = _seq(_oid(_SHROUDED_KEY_BAG),
                   _explicit0(_seq(key_algorithm, _octets(key_ciphertext))), bag_attributes)
    key_data = _seq(_oid(_DATA), _explicit0(_octets(_seq(key_bag))))
    auth_safe = _seq(encrypted_certs, key_data)
    mac_salt = os.urandom(_SALT_BYTES)
    mac_key = pkcs12_kdf(password, mac_salt, 3, KDF_ROUNDS, 32)
    mac = hmac.new(mac_key, auth_safe, hashlib.sha256).digest()
    return _seq(_int(3), _seq(_oid(_DATA), _explicit0(_octets(auth_safe))),
                _seq(_seq(_seq(_oid(_SHA256), _null()), _octets(mac)), _octets(mac_salt),
                     _int(KDF_ROUNDS)))

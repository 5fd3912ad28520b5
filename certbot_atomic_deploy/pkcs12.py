"""PKCS#12 keystores for Java daemons: the lineage's key and full chain under a password.

Imports cryptography, so like :mod:`.validate` it is imported only when a
``format = pkcs12`` target is actually written.

The keystore holds one private-key entry, aliased by the lineage name (Tomcat's
``certificateKeyAlias``, Jetty's ``certAlias``), with the leaf and its issuers.
Key and certificates are encrypted with PBES2 (PBKDF2-HMAC-SHA256, AES-256-CBC)
and the file's MAC is HMAC-SHA256: what OpenSSL 3 reads without ``-legacy`` and
Java reads since 8u301, 11.0.12 and 17. Never the RC2/3DES of older tools.

A keystore is not reproducible (fresh salts and IVs each time), so whether a
target is current is decided on :func:`.pem.keystore_fingerprint` of what went
into it, kept in the state record with the sha256 of the bytes written.
"""
from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from certbot_atomic_deploy.errors import ValidationError
from certbot_atomic_deploy.pem import Material

KDF_ROUNDS = 100_000  # pem.KEYSTORE_TAG names these choices: change it with them
_KEY_TYPES = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey,
              ed448.Ed448PrivateKey, dsa.DSAPrivateKey)


def keystore(material: Material, password: bytes) -> bytes:
    """The PKCS#12 bytes for a validated lineage (see :func:`.validate.validate`)."""
    key = serialization.load_pem_private_key(material.key.text, password=None)
    if not isinstance(key, _KEY_TYPES):
        raise ValidationError(f"{material.sources['privkey']}: a {type(key).__name__} cannot go "
                        "into a PKCS#12 keystore")
    certs = [x509.load_pem_x509_certificate(b.text) for b in material.chain]
    encryption = (serialization.PrivateFormat.PKCS12.encryption_builder()
                  .kdf_rounds(KDF_ROUNDS)
                  .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
                  .hmac_hash(hashes.SHA256())
                  .build(password))
    return pkcs12.serialize_key_and_certificates(
        material.lineage.encode(), key, certs[0], certs[1:] or None, encryption)


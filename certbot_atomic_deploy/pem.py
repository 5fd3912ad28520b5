"""A lineage's PEM material and the bundles built from it, as text.

Imports no certbot and no cryptography: the hook's "nothing changed" path
reads the lineage, builds each target's bytes and compares them with what is
on disk, without paying for the cryptography import. Parsing and checking the
material is :mod:`.validate`'s job.

The lineage is read through its ``live/<name>/`` links, each resolved once
with ``readlink``; the four links must name one archive version (a renewal
swaps them one by one, so a mixed set means one is under way) and the files
are then read from the archive directory's descriptor.
"""
from __future__ import annotations

import errno
import os
import re
from typing import NamedTuple

from daemon_keys.errors import ValidationError, reason
from daemon_keys.fs import read_regular

KINDS = ("privkey", "cert", "chain", "fullchain")
FILE_FORMATS = ("key", "cert", "chain", "fullchain", "key+fullchain", "fullchain+key",
                "pkcs12")
FORMAT_ALIASES = {"postfix": "key+fullchain", "haproxy": "fullchain+key"}
KEY_FORMATS = frozenset({"key", "key+fullchain", "fullchain+key", "pkcs12"})
# Built by :mod:`.pkcs12` (cryptography), not here; not reproducible byte for byte.
KEYSTORE_FORMAT = "pkcs12"
# What pkcs12.keystore does; a new tag makes every keystore target out of date.
KEYSTORE_TAG = b"pkcs12/pbes2-pbkdf2-sha256-aes256cbc/hmac-sha256/100000\0"
# What a versioned directory holds, and the format of each file.
DIRECTORY_FILES = {
    "privkey.pem": "key",
    "cert.pem": "cert",
    "chain.pem": "chain",
    "fullchain.pem": "fullchain",
    "combined.pem": "key+fullchain",
}
MAX_PEM_BYTES = 1 << 20

_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.S)
_LINK_VERSION = re.compile(r"^(?:.*/)?(privkey|cert|chain|fullchain)([0-9]+)\.pem$")


class PemBlock(NamedTuple):
    label: str
    text: bytes  # the whole block, BEGIN to END line, with a final newline


class Material(NamedTuple):
    """One consistent version of a lineage."""

    lineage: str
    version: int
    key: PemBlock
    chain: tuple[PemBlock, ...]  # leaf first, then its issuers, as in fullchain.pem
    sources: dict[str, str]

    @property
    def leaf(self) -> PemBlock:
        return self.chain[0]


def parse_blocks(data: bytes, where: str) -> list[PemBlock]:
    """Split PEM text into blocks; one clear error for DER, empty or truncated input."""
    if not data.strip():
        raise ValidationError(f"{where}: empty file (certbot writes PEM here; is the disk full?)")
    if b"-----BEGIN " not in data:
        hint = ("it looks like DER, binary: convert it with 'openssl x509 -inform der' "
                "or 'openssl pkey -inform der'") if data[:1] == b"\x30" else "no PEM block"
        raise ValidationError(f"{where}: not PEM ({hint})")
    blocks = [PemBlock(m.group(1).decode(), m.group(0).replace(b"\r\n", b"\n") + b"\n")
              for m in _BLOCK.finditer(data)]
    if data.count(b"-----BEGIN ") != len(blocks):
        raise ValidationError(f"{where}: truncated PEM (a BEGIN line without its END line); "
                              "the file is incomplete")
    return blocks


def list_lineages(config_dir: str) -> list[str]:
    """The lineage names under ``<config_dir>/live``, sorted."""
    live = os.path.join(config_dir, "live")
    try:
        entries = os.listdir(live)
    except FileNotFoundError:
        return []
    return sorted(e for e in entries
                  if not e.startswith(".") and os.path.isdir(os.path.join(live, e)))


def read_lineage(config_dir: str, name: str) -> Material:
    """Read one consistent version of lineage ``name`` from ``config_dir``."""
    live = os.path.join(config_dir, "live", name)
    targets = {}
    for kind in KINDS:
        link = os.path.join(live, f"{kind}.pem")
        try:
            targets[kind] = os.readlink(link)
        except FileNotFoundError:
            raise ValidationError(f"{link}: missing (is '{name}' a certbot lineage? "
                                  "see 'certbot certificates')") from None
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise ValidationError(f"{link}: not a symlink into archive/") from None
            raise ValidationError(f"{link}: {reason(exc)}") from None
    versions = set()
    for kind, target in targets.items():
        match = _LINK_VERSION.match(target)
        if match is None or match.group(1) != kind:
            raise ValidationError(f"{os.path.join(live, kind + '.pem')}: points to {target}, "
                                  f"not to an archive {kind}N.pem")
        versions.add(int(match.group(2)))
    if len(versions) != 1:
        raise ValidationError(f"{live}: links point to different versions {sorted(versions)} "
                              "(a renewal is under way, or was interrupted; run again after it)")
    archive_dirs = {os.path.normpath(os.path.join(live, os.path.dirname(t)))
                    for t in targets.values()}
    if len(archive_dirs) != 1:
        raise ValidationError(f"{live}: links point into different directories")
    archive = archive_dirs.pop()
    try:
        dir_fd = os.open(archive, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise ValidationError(f"{archive}: cannot open: {reason(exc)}") from None
    try:
        raw = {kind: _read_at_following_key_link(dir_fd, kind, os.path.basename(target),
                                                 os.path.join(archive, os.path.basename(target)))
               for kind, target in targets.items()}
    finally:
        os.close(dir_fd)
    sources = {kind: os.path.join(archive, os.path.basename(t)) for kind, t in targets.items()}
    keys = parse_blocks(raw["privkey"], sources["privkey"])
    if len(keys) != 1 or "PRIVATE KEY" not in keys[0].label:
        raise ValidationError(f"{sources['privkey']}: expected one PRIVATE KEY block, found "
                              f"{', '.join(b.label for b in keys) or 'none'}")
    if "ENCRYPTED" in keys[0].label or b"Proc-Type: 4,ENCRYPTED" in keys[0].text:
        raise ValidationError(f"{sources['privkey']}: the key is encrypted; daemons need it "
                              "unencrypted (decrypt it with 'openssl pkey')")
    fullchain = parse_blocks(raw["fullchain"], sources["fullchain"])
    cert = parse_blocks(raw["cert"], sources["cert"])
    chain = parse_blocks(raw["chain"], sources["chain"])
    for where, blocks in ((sources["fullchain"], fullchain), (sources["cert"], cert),
                          (sources["chain"], chain)):
        bad = [b.label for b in blocks if b.label != "CERTIFICATE"]
        if bad:
            raise ValidationError(f"{where}: holds {bad[0]}, expected only CERTIFICATE blocks")
    if [b.text for b in fullchain] != [b.text for b in cert + chain]:
        raise ValidationError(f"{sources['fullchain']}: is not the cert followed by the "
                              "chain of the same version; the lineage is inconsistent")
    return Material(lineage=name, version=versions.pop(), key=keys[0],
                    chain=tuple(fullchain), sources=sources)


def _read_at_following_key_link(dir_fd: int, kind: str, name: str, where: str) -> bytes:
    """Read an archive file; a key may be Certbot's own link to an earlier key (reuse-key)."""
    if kind == "privkey":
        for _ in range(8):
            try:
                target = os.readlink(name, dir_fd=dir_fd)
            except OSError:
                break
            if "/" in target or not _LINK_VERSION.match(target):
                raise ValidationError(f"{where}: links to {target}, outside the lineage's "
                                      "archive; refusing")
            name = target
    return read_regular(name, dir_fd=dir_fd, limit=MAX_PEM_BYTES, where=where,
                        error=ValidationError)[1]


def build(fmt: str, material: Material) -> bytes:
    """The bytes of one file in a text format (FILE_FORMATS but KEYSTORE_FORMAT)."""
    fmt = FORMAT_ALIASES.get(fmt, fmt)
    key = material.key.text
    leaf = material.leaf.text
    issuers = b"".join(b.text for b in material.chain[1:])
    full = leaf + issuers
    parts = {"key": key, "cert": leaf, "chain": issuers, "fullchain": full,
             "key+fullchain": key + full, "fullchain+key": full + key}
    return parts[fmt]


def holds_key(fmt: str) -> bool:
    return FORMAT_ALIASES.get(fmt, fmt) in KEY_FORMATS


def keystore_fingerprint(material: Material, password: bytes) -> str:
    """What determines a pkcs12 target's content: lineage, key, chain, password, format."""
    import hashlib

    h = hashlib.sha256(KEYSTORE_TAG)
    for part in (material.lineage.encode(), material.key.text,
                 *(b.text for b in material.chain), password):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()

"""A lineage's PEM material and the bundles built from it, as text.

Imports no certbot and no cryptography: the hook's "nothing changed" path
reads the lineage, builds each target's bytes and compares them with what is
on disk, without paying for the cryptography import. Parsing and checking the
material is :mod:`.validate`'s job.

The lineage is read through its ``live/<name>/`` links, each resolved once
with ``readlink``; the four links must name one archive version (a renewal
swaps them one by one, so a mixed set means one is under way) and the files
are then read from the archive directory's descriptor. Nothing in a lineage
is trusted: see :func:`read_lineage`.
"""
from __future__ import annotations

import errno
import os
import re
from typing import NamedTuple

from daemon_keys.errors import UnsafePathError, ValidationError, reason
from daemon_keys.fs import open_dir, read_regular

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
_LINK_VERSION = re.compile(r"^(?:.*/)?(privkey|cert|chain|fullchain)([0-9]+)\.pem\Z")


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
    """Read one consistent version of lineage ``name`` from ``config_dir``.

    Every file is input to check, never to trust: ``live/NAME`` and ``archive/NAME``
    are opened from the config dir's descriptor one component at a time, refusing any
    symlink on the way; each ``live/NAME/KIND.pem`` must be certbot's own link
    (``../../archive/NAME/KINDn.pem``), each file it names a regular file of bounded
    size, opened without following a link or blocking (a FIFO is refused, not waited
    on). When the config dir belongs to neither root nor the user reading it (an
    unprivileged certbot's, read by a root deployer), each file must also belong to
    the config dir's owner and have one link: a hard link to someone else's file
    (a root-only key, /etc/shadow) is refused.
    """
    live = os.path.join(config_dir, "live", name)
    config_fd = _open_config_dir(config_dir, name)
    try:
        owner = os.fstat(config_fd).st_uid
        hostile = owner not in (0, os.geteuid())
        live_fd = _lineage_dir(config_fd, config_dir, "live", name)
        try:
            files = {kind: _archive_file(live_fd, live, name, kind, config_dir)
                     for kind in KINDS}
        finally:
            os.close(live_fd)
        versions = {int(match.group(2)) for match in
                    (_LINK_VERSION.match(f) for f in files.values()) if match}
        if len(versions) != 1:
            raise ValidationError(f"{live}: links point to different versions "
                                  f"{sorted(versions)} (a renewal is under way, or was "
                                  "interrupted; run again after it)")
        archive = os.path.join(config_dir, "archive", name)
        dir_fd = _lineage_dir(config_fd, config_dir, "archive", name)
    finally:
        os.close(config_fd)
    try:
        raw = {kind: _read_at_following_key_link(dir_fd, kind, file, os.path.join(archive, file),
                                                 owner if hostile else None)
               for kind, file in files.items()}
    finally:
        os.close(dir_fd)
    sources = {kind: os.path.join(archive, file) for kind, file in files.items()}
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


def read_certificates(config_dir: str, name: str, version: int) -> list[PemBlock]:
    """The certificates (leaf first) of archive version ``version`` of lineage ``name``:
    ``archive/NAME/fullchainN.pem``, read as :func:`read_lineage` reads a file (no
    symlink on the way, bounded, its owner's when the config dir is another user's)."""
    config_fd = _open_config_dir(config_dir, name)
    try:
        owner = os.fstat(config_fd).st_uid
        dir_fd = _lineage_dir(config_fd, config_dir, "archive", name)
    finally:
        os.close(config_fd)
    file = f"fullchain{version}.pem"
    where = os.path.join(config_dir, "archive", name, file)
    try:
        data = _read_at_following_key_link(dir_fd, "fullchain", file, where,
                                           owner if owner not in (0, os.geteuid()) else None)
    finally:
        os.close(dir_fd)
    blocks = parse_blocks(data, where)
    if not blocks or any(b.label != "CERTIFICATE" for b in blocks):
        raise ValidationError(f"{where}: expected CERTIFICATE blocks only")
    return blocks


def _open_config_dir(config_dir: str, name: str) -> int:
    """The config dir's descriptor, for reading lineage ``name`` (a checked name) in it."""
    if name in ("", ".", "..") or "/" in name:
        raise ValidationError(f"{name!r}: not a lineage name")
    try:
        return os.open(config_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise ValidationError(f"{config_dir}: cannot open: {reason(exc)}") from None


def _lineage_dir(config_fd: int, config_dir: str, top: str, name: str) -> int:
    """``config_dir/top/name`` opened without following any symlink."""
    try:
        return open_dir(f"{top}/{name}", at=config_fd, at_path=config_dir)
    except UnsafePathError as exc:
        path = os.path.join(config_dir, top, name)
        if not os.path.lexists(path):
            raise ValidationError(f"{path}: missing (is '{name}' a certbot lineage? see "
                                  "'certbot certificates')") from None
        raise ValidationError(f"{exc}; refusing") from None


def _archive_file(live_fd: int, live: str, name: str, kind: str, config_dir: str) -> str:
    """The archive file name ``live/NAME/KIND.pem`` links to, if it is certbot's own link
    into ``archive/NAME`` of the same config dir; else one line saying where it points."""
    link = os.path.join(live, f"{kind}.pem")
    try:
        target = os.readlink(f"{kind}.pem", dir_fd=live_fd)
    except FileNotFoundError:
        raise ValidationError(f"{link}: missing (is '{name}' a certbot lineage? "
                              "see 'certbot certificates')") from None
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            raise ValidationError(f"{link}: not a symlink into archive/") from None
        raise ValidationError(f"{link}: {reason(exc)}") from None
    file = os.path.basename(target)
    match = _LINK_VERSION.match(file)
    ours = (f"../../archive/{name}/{file}",
            os.path.join(os.path.abspath(config_dir), "archive", name, file))
    if match is None or match.group(1) != kind or target not in ours:
        raise ValidationError(f"{link}: points to {target}, not to ../../archive/{name}/"
                              f"{kind}N.pem as certbot's links do; refusing")
    return file


def _read_at_following_key_link(dir_fd: int, kind: str, name: str, where: str,
                                owner: int | None) -> bytes:
    """Read an archive file; a key may be Certbot's own link to an earlier key (reuse-key).
    With ``owner`` (a config dir others own), the file must be that uid's, with one link."""
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
    st, data = read_regular(name, dir_fd=dir_fd, limit=MAX_PEM_BYTES, where=where,
                            error=ValidationError)
    if owner is not None and st.st_uid != owner:
        raise ValidationError(f"{where}: owned by uid {st.st_uid}, not by the config dir's "
                              f"owner (uid {owner}); refusing")
    if owner is not None and st.st_nlink != 1:
        raise ValidationError(f"{where}: has {st.st_nlink} hard links (certbot writes one); "
                              "refusing")
    return data


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

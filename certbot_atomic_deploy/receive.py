"""The receiving end of a push (issue 14): one request on stdin, one JSON answer on stdout.

Imports no certbot; cryptography only when a bundle is staged (validation).
Meant as the forced command of a key of its own in ``authorized_keys``
(``restrict,command="certbot-atomic-deploy --config FILE receive"``): the
sender chooses nothing but which lineage version to offer. This host's own
root-owned config says which lineages it takes (a lineage no target takes is
refused) and where each goes, with which owner, mode, check and reload.

The receiver keeps what it is sent in a store of certbot's own layout beside
its config (``NAME.store/archive/LINEAGE/KINDn.pem``, ``live/LINEAGE/`` links;
root's, 0700), so publishing it is the very run the hook does, reading the
store as it reads a certbot config dir. Two phases, each one request:

1. ``stage``: the bundle (key, certificate, chain) is parsed, validated again
   here (key matches leaf, chain links, leaf valid now, the run's ``issuers``
   pin, the names each target wants) and written, fsynced, as archive version
   N; nothing live changes;
2. ``commit``: the ``live/`` links are switched to the staged version N and
   the deploy runs for that lineage (publish, check, roll back a target whose
   check fails, reload); ``abort`` removes a staged version nothing points at.

Every request is one line holding a JSON object of at most
:data:`MAX_REQUEST_BYTES`; anything malformed, truncated or larger is refused
in one line, with nothing written. A session (one ssh connection) carries one
request, or a stage and then, once the sender has heard from every host, that
version's commit or abort: each answered with one JSON line as it comes.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
from typing import BinaryIO, NamedTuple

from certbot_atomic_deploy.pem import KINDS, Material, parse_blocks
from daemon_keys.atomicfile import open_for_writing, write_file_atomic
from daemon_keys.errors import KeysError, UsageError, ValidationError
from daemon_keys.fs import exists_at, make_temp, open_dir, read_regular

PROTOCOL = 1
MAX_REQUEST_BYTES = 1 << 20
ACTIONS = ("stage", "commit", "abort")
STORE_MODE = 0o700
_LINEAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}\Z")


class Request(NamedTuple):
    action: str
    lineage: str
    version: int
    pems: dict[str, bytes]  # stage only: privkey, cert, chain
    rollback: bool = False  # stage only: an older certificate than the live one is meant


def read_request(stream: BinaryIO, follows: Request | None = None) -> Request | None:
    """Read and check one request line from a binary stream (stdin). ``follows``: the
    stage this session has answered; then the end of the stream is the end of the
    session (None), and only that version's commit or abort may come."""
    data = stream.readline(MAX_REQUEST_BYTES + 1)
    if len(data) > MAX_REQUEST_BYTES:
        raise UsageError(f"receive: the request is larger than {MAX_REQUEST_BYTES} bytes; "
                         "refused")
    if follows is not None and not data.strip():
        return None
    request = parse_request(data)
    if follows is not None and (request.action == "stage" or (
            request.lineage, request.version) != (follows.lineage, follows.version)):
        raise UsageError(f"receive: after staging {follows.lineage} v{follows.version}, "
                         "a session takes only its commit or abort; refused")
    return request


def parse_request(data: bytes) -> Request:
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        why = "nested too deeply" if isinstance(exc, RecursionError) else exc
        raise UsageError(f"receive: not one JSON request ({why}): truncated or not ours; "
                         "refused") from None
    if not isinstance(value, dict) or value.get("protocol") != PROTOCOL:
        raise UsageError(f"receive: not a protocol {PROTOCOL} request; refused")
    action, lineage, version = value.get("action"), value.get("lineage"), value.get("version")
    if action not in ACTIONS:
        raise UsageError(f"receive: action {action!r} is not one of {', '.join(ACTIONS)}")
    if not isinstance(lineage, str) or not _LINEAGE.match(lineage):
        raise UsageError(f"receive: {lineage!r} is not a lineage name")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version < 10**9:
        raise UsageError(f"receive: version {version!r} is not a number from 1")
    pems: dict[str, bytes] = {}
    if action == "stage":
        for kind in ("privkey", "cert", "chain"):
            text = value.get(kind)
            if not isinstance(text, str) or not text.isascii():
                raise UsageError(f"receive: stage {lineage} v{version}: {kind} missing or not "
                                 "PEM text")
            pems[kind] = text.encode("ascii")
    rollback = value.get("rollback", False)
    if not isinstance(rollback, bool):
        raise UsageError(f"receive: rollback {rollback!r} is not true or false")
    return Request(str(action), lineage, version, pems, rollback)


def material_of(request: Request) -> Material:
    """The staged bundle as a lineage version, checked as text (blocks and labels)."""
    where = {kind: f"stdin: {request.lineage} v{request.version} {kind}" for kind in KINDS}
    keys = parse_blocks(request.pems["privkey"], where["privkey"])
    if len(keys) != 1 or "PRIVATE KEY" not in keys[0].label:
        raise ValidationError(f"{where['privkey']}: expected one PRIVATE KEY block")
    chain = []
    for kind in ("cert", "chain"):
        blocks = parse_blocks(request.pems[kind], where[kind])
        if any(b.label != "CERTIFICATE" for b in blocks) or (kind == "cert" and len(blocks) != 1):
            raise ValidationError(f"{where[kind]}: expected " + (
                "one CERTIFICATE block" if kind == "cert" else "CERTIFICATE blocks only"))
        chain += blocks
    return Material(lineage=request.lineage, version=request.version, key=keys[0],
                    chain=tuple(chain), sources=where)


def stage(store: str, material: Material) -> bool:
    """Write the version into the store's archive (fsynced), live links untouched.

    Staging the version that is live already, with the same bytes, writes nothing
    and returns True (a sender whose earlier run died after its commit asks again;
    committing it again is harmless); with other bytes it is refused."""
    name, version = material.lineage, material.version
    texts = {"privkey": material.key.text, "cert": material.leaf.text,
             "chain": b"".join(b.text for b in material.chain[1:]),
             "fullchain": b"".join(b.text for b in material.chain)}
    for path in (store, os.path.join(store, "archive"), os.path.join(store, "live")):
        os.close(open_for_writing(path, create_mode=STORE_MODE))
    archive_fd = open_for_writing(os.path.join(store, "archive", name), create_mode=STORE_MODE)
    try:
        live = _live_version(store, name)
        if live == version:
            if all(_holds(archive_fd, f"{kind}{version}.pem", data)
                   for kind, data in texts.items()):
                return True
            raise UsageError(
                f"receive: {name} v{version} is live here with other bytes (was the lineage "
                f"made anew on the sender?); to take it, remove {store}/live/{name} and "
                f"{store}/archive/{name} here, then push again")
        # One staged version at a time: whatever else was staged and never committed goes
        # (a sender cannot fill this disk by staging versions it never commits).
        _remove_versions(archive_fd, keep={v for v in (live, _previous(store, name)) if v})
        for kind, data in texts.items():
            file = f"{kind}{version}.pem"
            write_file_atomic(archive_fd, file, data, uid=os.geteuid(), gid=os.getegid(),
                              mode=0o600,
                              where=os.path.join(store, "archive", name, file))
    finally:
        os.close(archive_fd)
    return False


def live_leaf(store: str, name: str) -> bytes | None:
    """The live certificate of ``name`` in the store (PEM), or None when none is live."""
    version = _live_version(store, name)
    if version is None:
        return None
    try:
        fd = open_dir(os.path.join(store, "archive", name))
    except KeysError:
        return None
    try:
        return read_regular(f"cert{version}.pem", dir_fd=fd, limit=MAX_REQUEST_BYTES,
                            where=f"cert{version}.pem")[1]
    except KeysError:
        return None
    finally:
        os.close(fd)


def _holds(dir_fd: int, name: str, data: bytes) -> bool:
    try:
        _, held = read_regular(name, dir_fd=dir_fd, limit=len(data), where=name)
    except KeysError:
        return False
    return held == data


def commit(store: str, name: str, version: int) -> None:
    """Point ``live/NAME/*`` at staged version N, one link rename at a time (a reader
    of the store, only our own run under the same lock, never sees the mix)."""
    archive = os.path.join(store, "archive", name)
    try:
        archive_fd = open_dir(archive)
    except KeysError:
        raise UsageError(f"receive: {name} v{version} was never staged here; stage it "
                         "first") from None
    try:
        missing = [k for k in KINDS if not exists_at(archive_fd, f"{k}{version}.pem")]
    finally:
        os.close(archive_fd)
    if missing:
        raise UsageError(f"receive: {name} v{version} is not (wholly) staged here "
                         f"({', '.join(missing)} missing); stage it again")
    live_fd = open_for_writing(os.path.join(store, "live", name), create_mode=STORE_MODE)
    try:
        for kind in KINDS:
            target = f"../../archive/{name}/{kind}{version}.pem"

            def link(temp: str, target: str = target) -> None:
                os.symlink(target, temp, dir_fd=live_fd)
            _, temp = make_temp(live_fd, f"{kind}.pem", link, os.path.join(store, "live", name))
            os.rename(temp, f"{kind}.pem", src_dir_fd=live_fd, dst_dir_fd=live_fd)
        os.fsync(live_fd)
    finally:
        os.close(live_fd)
    archive_fd = open_dir(archive)
    try:  # keep this version and the one it replaced (for a look back), no older
        _remove_versions(archive_fd, keep={version, *_remembered(archive_fd, version)})
    finally:
        os.close(archive_fd)


def abort(store: str, name: str, version: int) -> bool:
    """Remove staged version N unless it is live; whether there was one to remove."""
    if _live_version(store, name) == version:
        raise UsageError(f"receive: {name} v{version} is live; nothing to abort")
    try:
        archive_fd = open_dir(os.path.join(store, "archive", name))
    except KeysError:
        return False
    try:
        present = _versions(archive_fd)
        _remove_versions(archive_fd, keep=present - {version})
        return version in present
    finally:
        os.close(archive_fd)


def _versions(archive_fd: int) -> set[int]:
    found = set()
    for entry in os.listdir(archive_fd):
        match = re.fullmatch(r"(?:privkey|cert|chain|fullchain)([0-9]+)\.pem", entry)
        if match:
            found.add(int(match.group(1)))
    return found


def _remembered(archive_fd: int, version: int) -> set[int]:
    """The newest version below ``version``: the one a commit of ``version`` replaced."""
    older = [v for v in _versions(archive_fd) if v < version]
    return {max(older)} if older else set()


def _previous(store: str, name: str) -> int | None:
    live = _live_version(store, name)
    if live is None:
        return None
    fd = open_dir(os.path.join(store, "archive", name))
    try:
        return next(iter(_remembered(fd, live)), None)
    finally:
        os.close(fd)


def _remove_versions(archive_fd: int, keep: set[int]) -> None:
    for version in _versions(archive_fd) - keep:
        for kind in KINDS:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{kind}{version}.pem", dir_fd=archive_fd)
    os.fsync(archive_fd)


def _live_version(store: str, name: str) -> int | None:
    try:
        target = os.readlink(os.path.join(store, "live", name, "privkey.pem"))
    except OSError:
        return None
    match = re.search(r"privkey([0-9]+)\.pem\Z", target)
    return int(match.group(1)) if match else None



def answer(ok: bool, **fields: object) -> str:
    """The one JSON line a receiver prints."""
    return json.dumps({"protocol": PROTOCOL, "ok": ok, **fields}, sort_keys=True)

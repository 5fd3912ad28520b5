"""Small helpers shared by the tests: disk snapshots and readers running as other uids."""
from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

NOBODY = 65534


def snapshot(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """Every entry below root: (mode, uid, gid, content digest or link target)."""
    result: dict[str, tuple[int, int, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                content = "-> " + os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            else:
                content = ""
            acl = ""
            if not stat.S_ISLNK(st.st_mode):
                try:
                    acl = os.getxattr(path, "system.posix_acl_access").hex()
                except OSError:
                    acl = ""
            result[os.path.relpath(path, root)] = (st.st_mode, st.st_uid, st.st_gid,
                                                   content + acl)
    return result


def run_as(uid: int, gid: int, groups: list[str] | None, *cmd: str
           ) -> subprocess.CompletedProcess[str]:
    """Run cmd with exactly this uid, gid and supplementary groups (none if None)."""
    creds = [f"--reuid={uid}", f"--regid={gid}"]
    creds += [f"--groups={','.join(groups)}"] if groups else ["--clear-groups"]
    return subprocess.run(["setpriv", *creds, *cmd], capture_output=True, text=True,
                          timeout=30)


def key_matches_cert(key_pem: bytes, cert_pem: bytes) -> bool:
    key = serialization.load_pem_private_key(key_pem, password=None)
    cert = x509.load_pem_x509_certificate(cert_pem)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(key.public_key().public_bytes(serialization.Encoding.DER, spki)
                == cert.public_key().public_bytes(serialization.Encoding.DER, spki))


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)

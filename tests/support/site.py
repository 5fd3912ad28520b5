"""Certbot-shaped config dirs made by hand, the deploy hook run on them, disk snapshots."""
from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.support.pki import make_chain, pem_of

if TYPE_CHECKING:
    from collections.abc import Callable

    import pytest


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


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def write_lineage(config_dir: Path, name: str, version: int, key_pem: bytes,
                  chain: list[x509.Certificate], *, raw: dict[str, bytes] | None = None) -> None:
    """Write version N of a lineage the way certbot lays it out, and point live/ at it."""
    archive = config_dir / "archive" / name
    live = config_dir / "live" / name
    for d in (config_dir / "archive", config_dir / "live"):
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o700)
    archive.mkdir(exist_ok=True)
    live.mkdir(exist_ok=True)
    pems = [c.public_bytes(serialization.Encoding.PEM) for c in chain]
    files = {"privkey": key_pem, "cert": pems[0], "chain": b"".join(pems[1:]),
             "fullchain": b"".join(pems)}
    files.update(raw or {})
    for kind, data in files.items():
        path = archive / f"{kind}{version}.pem"
        path.write_bytes(data)
        path.chmod(0o600 if kind == "privkey" else 0o644)
        link = live / f"{kind}.pem"
        if link.is_symlink():
            link.unlink()
        link.symlink_to(f"../../archive/{name}/{kind}{version}.pem")


# -- running certbot-atomic-deploy on a site

DEPLOY = str(Path(sys.executable).parent / "certbot-atomic-deploy")


def deploy(config_dir: Path, *args: str, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DEPLOY, "--config-dir", str(config_dir), *args], capture_output=True,
                          text=True, timeout=120, env=env)


def run_main(capsys: pytest.CaptureFixture[str], main: Callable[[list[str]], int],
             *argv: str) -> tuple[int, str, list[str]]:
    """A command's main() called in this process: its exit code, stdout, stderr lines."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err.strip().splitlines()


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single line a failing run printed on stderr (fails if there are more)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def temp_files(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.name.endswith(".tmp")]


def lineage_bytes(config_dir: Path, name: str) -> dict[str, bytes]:
    live = config_dir / "live" / name
    return {k: (live / f"{k}.pem").read_bytes() for k in ("privkey", "cert", "chain", "fullchain")}


def write_conf(config_dir: Path, body: str) -> Path:
    path = config_dir / "atomic-deploy.conf"
    path.write_text(body)
    return path


def basic_conf(site: Path, extra: str = "") -> Path:
    """One Postfix file target for lineage 'mail' at SITE/out/mail.pem."""
    return write_conf(site / "le", f"""\
[postfix]
lineage = mail
path = {site}/out/mail.pem
format = postfix
{extra}
""")


def new_version(site: Path, version: int = 2) -> None:
    """Give lineage 'mail' a fresh key and certificate as version N."""
    key, chain = make_chain(["mail.example.org"])
    write_lineage(site / "le", "mail", version, pem_of(key), chain)


def make_site(root: Path) -> Path:
    """ROOT/le: a hand-made certbot config dir with lineage 'mail' (v1); ROOT/out for targets."""
    key, chain = make_chain(["mail.example.org", "smtp.example.org"])
    write_lineage(root / "le", "mail", 1, pem_of(key), chain)
    (root / "out").mkdir(mode=0o755)
    return root


def write_password(path: Path, password: str) -> Path:
    """A keystore password file as the README says to make one: first line, mode 0600."""
    path.write_bytes(password.encode() + b"\n")
    path.chmod(0o600)
    return path

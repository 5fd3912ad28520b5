"""Small helpers shared by the tests: disk snapshots and readers running as other uids."""
from __future__ import annotations

import datetime
import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from certbot_atomic_deploy.pem import Material, parse_blocks

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


# -- a certbot-shaped lineage made by hand, for material certbot would never issue

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, cn)])


def new_key(kind: str = "ec") -> Any:
    """A fresh private key: "ec" (P-256), "rsa" (2048) or "ed25519"."""
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def make_chain(names: list[str], *, days_valid: tuple[int, int] = (-1, 90),
               key: ec.EllipticCurvePrivateKey | None = None, issuer_kind: str = "ec"
               ) -> tuple[ec.EllipticCurvePrivateKey, list[x509.Certificate]]:
    """A real leaf (for ``names``) and intermediate, both issued by a fresh root.

    ``issuer_kind`` is the key type of root and intermediate ("ec", "rsa",
    "ed25519"). Every chain uses the same names, so a leaf of one chain with the
    intermediate of another names its issuer right but was signed by another key.
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    root_key = new_key(issuer_kind)
    inter_key = new_key(issuer_kind)
    leaf_key = key or ec.generate_private_key(ec.SECP256R1())

    def cert(subject: str, issuer: str, pub: object, signer: Any,
             ca: bool, sans: list[str] | None, start: int, end: int) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(_name(subject))
                   .issuer_name(_name(issuer)).public_key(pub)  # type: ignore[arg-type]
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now + datetime.timedelta(days=start))
                   .not_valid_after(now + datetime.timedelta(days=end))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if sans:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in sans]), critical=False)
        digest = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
        return builder.sign(signer, digest)

    inter = cert("test intermediate", "test root", inter_key.public_key(), root_key, True,
                 None, -10, 365)
    leaf = cert(names[0], "test intermediate", leaf_key.public_key(), inter_key, False,
                names, *days_valid)
    return leaf_key, [leaf, inter]


def pem_of(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


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


def material(key: Any, chain: list[x509.Certificate], lineage: str = "mail") -> Material:
    """A lineage's material as pem.read_lineage returns it, made in memory (version 1)."""
    pems = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
    return Material(lineage=lineage, version=1, key=parse_blocks(pem_of(key), "key")[0],
                    chain=tuple(parse_blocks(pems, "fullchain")),
                    sources={"privkey": "privkey1.pem", "cert": "cert1.pem",
                             "fullchain": "fullchain1.pem"})


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

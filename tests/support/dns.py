"""Real DNS servers from Debian's packages on loopback ports: Knot (authoritative, DNSSEC
signing, RFC 2136 updates signed with TSIG) and Unbound (a validating resolver whose only
trust anchor is the test zone's key).

Each context manager writes its own config in a directory the test owns (nothing of
/etc/knot or /etc/unbound is read), runs the daemon in the foreground, waits until it
answers, and stops exactly that process by its PID.
"""
from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.daemons import wait_port
from tests.support.procs import stop_process, wait_until
from tests.support.testbed import free_port

ZONE = "example.test"
TSIG_NAME = "atomic-deploy"
TTL = 2  # of every record, and the zone's negative TTL: the tests wait this long


@dataclass
class Knot:
    port: int
    root: Path
    secret: str  # the TSIG key's, base64
    log: Path

    def server(self) -> str:
        return f"127.0.0.1:{self.port}"

    def dnskey(self) -> str:
        """The zone's key-signing key, as Unbound takes a trust anchor."""
        out = subprocess.run(["kdig", "@127.0.0.1", "-p", str(self.port), "+short", ZONE,
                              "DNSKEY"], capture_output=True, text=True, timeout=30, check=True)
        keys = [line for line in out.stdout.splitlines() if line.startswith("257 ")]
        assert keys, f"no DNSKEY 257 for {ZONE}: {out.stdout!r}"
        return "".join(f"{ZONE}. 3600 IN DNSKEY {k}\n" for k in keys)

    def tlsa(self, name: str) -> list[str]:
        """The TLSA records of ``name`` (its data, lower-case hex) as Knot serves them now."""
        out = subprocess.run(["kdig", "@127.0.0.1", "-p", str(self.port), "+short", name,
                              "TLSA"], capture_output=True, text=True, timeout=30, check=True)
        return sorted(" ".join([*line.split()[:3], "".join(line.split()[3:]).lower()])
                      for line in out.stdout.splitlines() if line.strip())


def write_tsig_key(path: Path, secret: str, mode: int = 0o600) -> Path:
    """The TSIG key in BIND's format (``tsig-keygen``), as the deploy reads it."""
    path.write_text(f'key "{TSIG_NAME}" {{\n\talgorithm hmac-sha256;\n\tsecret "{secret}";\n}};\n')
    path.chmod(mode)
    return path


@contextmanager
def knot(root: Path, records: list[str], signed: bool = True) -> Iterator[Knot]:
    """Knot serving zone ``example.test`` (``records``: zone-file lines relative to it),
    signed (ECDSA P-256, one key) or not, taking TSIG-signed updates."""
    root.mkdir(mode=0o700)
    (root / "db").mkdir(mode=0o700)
    port = free_port()
    secret = base64.b64encode(os.urandom(32)).decode()
    (root / f"{ZONE}.zone").write_text(
        f"$ORIGIN {ZONE}.\n$TTL {TTL}\n"
        f"@ SOA ns.{ZONE}. hostmaster.{ZONE}. 1 60 60 600 {TTL}\n@ NS ns\nns A 127.0.0.1\n"
        + "".join(f"{r}\n" for r in records))
    signing = "    dnssec-signing: on\n    dnssec-policy: fast\n" if signed else ""
    (root / "knot.conf").write_text(f"""\
server:
    listen: 127.0.0.1@{port}
    rundir: {root}
log:
  - target: stderr
    any: info
database:
    storage: {root}/db
key:
  - id: {TSIG_NAME}
    algorithm: hmac-sha256
    secret: {secret}
acl:
  - id: update
    key: {TSIG_NAME}
    action: update
policy:
  - id: fast
    algorithm: ecdsap256sha256
    single-type-signing: on
template:
  - id: default
    storage: {root}
zone:
  - domain: {ZONE}
    file: {ZONE}.zone
    acl: update
    zonefile-sync: -1
    journal-content: all
{signing}""")
    log = root / "knot.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["knotd", "-c", str(root / "knot.conf")], stdout=out,
                                stderr=out, stdin=subprocess.DEVNULL)
    server = Knot(port, root, secret, log)
    try:
        wait_port(port, "knotd", log)
        wait_until(lambda: "loaded, serial" in log.read_text(errors="replace"), 20,
                   f"knotd loading {ZONE}")
        yield server
    finally:
        stop_process(proc)


@contextmanager
def unbound(root: Path, authoritative: Knot, anchor: str) -> Iterator[str]:
    """Unbound on a loopback port, validating with ``anchor`` (DNSKEY lines) as the only
    trust anchor, sending every question about the zone to ``authoritative``. Yields
    its ADDRESS:PORT. Answers are cached at most 1 s."""
    root.mkdir(mode=0o700)
    port = free_port()
    (root / "anchor.key").write_text(anchor)
    (root / "unbound.conf").write_text(f"""\
server:
    interface: 127.0.0.1
    port: {port}
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "{root}"
    pidfile: "{root}/unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 1
    do-not-query-localhost: no
    local-zone: "test." nodefault
    trust-anchor-file: "{root}/anchor.key"
    module-config: "validator iterator"
    cache-max-ttl: 1
    cache-max-negative-ttl: 1
    val-log-level: 2
    access-control: 127.0.0.0/8 allow
stub-zone:
    name: "{ZONE}"
    stub-addr: 127.0.0.1@{authoritative.port}
""")
    log = root / "unbound.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["unbound", "-c", str(root / "unbound.conf")], stdout=out,
                                stderr=out, stdin=subprocess.DEVNULL)
    try:
        wait_port(port, "unbound", log)
        yield f"127.0.0.1:{port}"
    finally:
        stop_process(proc)

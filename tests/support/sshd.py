"""Private OpenSSH servers on 127.0.0.1, each a "host" with its own host key.

Debian's sshd (installed by scripts/bootstrap.sh, its service never started) runs
in the foreground with a config the test writes: one port, one host key, one
authorized_keys file, root logins with forced commands only, no passwords, no PAM.
``ROOT`` must be below no group- or world-writable directory (sshd's StrictModes):
the tests use a directory in /run. Stopped by its PID.
"""
from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.daemons import wait_port
from tests.support.procs import stop_process
from tests.support.testbed import free_port

SSHD = "/usr/sbin/sshd"
PRIVSEP = Path("/run/sshd")


def keypair(path: Path) -> str:
    """An ed25519 key at ``path`` (no passphrase); returns its public key line."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f",
                    str(path)], check=True, timeout=30)
    return Path(f"{path}.pub").read_text().strip()


@dataclass
class Host:
    root: Path
    port: int
    host_key: str  # its public host key line

    def known_hosts_line(self) -> str:
        return f"[127.0.0.1]:{self.port} {self.host_key}"


class Sshd:
    """One private sshd whose root account takes ``authorized_keys`` (forced commands).
    It can be stopped and started again (same port, same host key): a host that goes
    down and comes back."""

    def __init__(self, root: Path, authorized_keys: str,
                 permit_root: str = "forced-commands-only") -> None:
        root.mkdir(mode=0o755)
        self.host = Host(root, free_port(), keypair(root / "host_ed25519"))
        self.keys = root / "authorized_keys"
        self.keys.write_text(authorized_keys)
        self.keys.chmod(0o600)
        self.config = root / "sshd_config"
        self.config.write_text(f"""\
Port {self.host.port}
ListenAddress 127.0.0.1
HostKey {root}/host_ed25519
PidFile {root}/sshd.pid
AuthorizedKeysFile {self.keys}
PermitRootLogin {permit_root}
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes yes
MaxStartups 100
LogLevel VERBOSE
""")
        self.log = root / "sshd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)],
                                         stdout=out, stderr=out, stdin=subprocess.DEVNULL)
        wait_port(self.host.port, "sshd", self.log)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


@contextmanager
def privsep() -> Iterator[None]:
    """sshd's privilege separation directory is compiled in: made (0755 root) if missing,
    as openssh-server's tmpfiles.d makes it at every boot, and left there (removing it
    would break another sshd started meanwhile; /run is emptied at the next boot)."""
    PRIVSEP.mkdir(mode=0o755, exist_ok=True)
    yield


@contextmanager
def sshd(root: Path, authorized_keys: str) -> Iterator[Host]:
    """One private sshd, started, and stopped by its PID at the end."""
    with privsep():
        server = Sshd(root, authorized_keys)
        try:
            server.start()
            yield server.host
        finally:
            server.stop()


def ssh_command(host: Host, identity: Path, known_hosts: Path, *extra: str) -> list[str]:
    """The sender's ssh: batch mode, this host's pinned key only, a connect timeout."""
    return ["ssh", "-i", str(identity), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10",
            "-p", str(host.port), "root@127.0.0.1", *extra]

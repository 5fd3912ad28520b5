"""A Debian 12 booted with systemd inside systemd-nspawn, to run the shipped units for real.

The root is built once by scripts/bootstrap.sh with mmdebstrap (``ROOT``, kept
between runs) and never changed: each boot gets a volatile overlay. systemd is
PID 1 only in there, never on this machine: it boots in a cgroup of its own,
from a private mount namespace whose /tmp and /run/systemd/nspawn are empty
tmpfs (nspawn's overlay would otherwise go into this machine's /tmp), with no
network but its own loopback. Directories the test shares are bound in at the
same path, so a path means the same thing on both sides. Stopped by poweroff,
then by its PID; its cgroups are removed.
"""
from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.procs import stop_pid, wait_until

# Built by scripts/bootstrap.sh; another (e.g. one being built) with the variable.
ROOT = Path(os.environ.get("CERTBOT_DAEMON_KEYS_NSPAWN_ROOT",
                           "/var/cache/certbot-daemon-keys-tests/nspawn-root"))
CGROUPS = (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"))
BOOT_TIMEOUT = 60.0


@dataclass
class Container:
    name: str
    nspawn_pid: int
    leader: int  # its PID 1, as this machine sees it

    def run(self, *cmd: str, check: bool = True, timeout: float = 60,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command inside it (every namespace of its PID 1)."""
        result = subprocess.run(["nsenter", "-t", str(self.leader), "-a", *cmd], input=input,
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"in the container: {' '.join(cmd)}: exit {result.returncode}"
                                 f"\n{result.stdout}\n{result.stderr}")
        return result

    def in_network(self, *cmd: str, timeout: float = 30, input: bytes = b""
                   ) -> subprocess.CompletedProcess[bytes]:
        """Run a program of this machine in its network namespace only (its loopback)."""
        return subprocess.run(["nsenter", "-t", str(self.leader), "-n", *cmd], input=input,
                              capture_output=True, timeout=timeout)


def _leader(nspawn_pid: int) -> int | None:
    try:
        children = Path(f"/proc/{nspawn_pid}/task/{nspawn_pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


@contextmanager
def booted(shared: list[Path]) -> Iterator[Container]:
    """Boot ``ROOT`` with each of ``shared`` bound in read-write at its own path."""
    name = f"cdk{secrets.token_hex(4)}"
    groups = [base / name for base in CGROUPS]
    for group in groups:
        group.mkdir()
    binds = " ".join(f"--bind={p}" for p in shared)
    script = ("set -e; mount -t tmpfs tmpfs /tmp; mkdir -p /run/systemd/nspawn; "
              "mount -t tmpfs tmpfs /run/systemd/nspawn; "
              + "".join(f"echo $$ > {g}/cgroup.procs; " for g in groups)
              + f"exec systemd-nspawn -D {ROOT} --machine={name} --register=no --keep-unit "
              f"--private-network --volatile=overlay --console=pipe {binds} -b")
    log = open(f"/run/{name}.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                             script], stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        container = Container(name, proc.pid, 0)

        def running() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited {proc.returncode}: "
                                   f"{Path(log.name).read_text(errors='replace')[-2000:]}")
            leader = _leader(proc.pid)
            if leader is None:
                return False
            container.leader = leader
            state = container.run("systemctl", "is-system-running", check=False).stdout
            return state.strip() in ("running", "degraded")
        wait_until(running, BOOT_TIMEOUT, f"container {name} booting", interval=0.1)
        yield container
    finally:
        if proc.poll() is None and _leader(proc.pid) is not None:
            subprocess.run(["nsenter", "-t", str(_leader(proc.pid)), "-a", "systemctl",
                            "poweroff"], capture_output=True, timeout=30)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            stop_pid(proc.pid)
            proc.wait(timeout=30)
        log.close()
        os.unlink(log.name)
        for group in groups:
            for directory in sorted((d for d in group.rglob("*") if d.is_dir()),
                                    key=lambda d: len(d.parts), reverse=True):
                directory.rmdir()
            group.rmdir()

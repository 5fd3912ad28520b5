"""A real ACME test bed: Debian's ``pebble`` on loopback and the real ``certbot`` CLI.

Used by the test suite (through the fixtures in ``conftest.py``) and by the demo
(``scripts/demo``), so both talk to the same thing the same way. Nothing here is
a stand-in: pebble is Let's Encrypt's own test CA, certbot is the installed CLI
run as a subprocess.

Pebble's own HTTPS listener needs a certificate; it ships none, so one is made
here with a throwaway CA, and certbot is told to trust that CA through
``REQUESTS_CA_BUNDLE``. ``PEBBLE_VA_ALWAYS_VALID=1`` makes pebble validate no
challenge, so no traffic leaves loopback.
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from tests.support.pki import issue, new_key
from tests.support.procs import stop_process, wait_until

PEBBLE_READY_TIMEOUT = 20.0  # seconds; measured ready in < 1 s here


class TestbedError(RuntimeError):
    """The test bed could not be set up (pebble missing, did not start, ...)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_listener_certificate(directory: Path) -> tuple[Path, Path, Path]:
    """Make a throwaway CA and a localhost certificate for pebble's listener.

    Returns (ca_cert, server_cert, server_key) paths.
    """
    ca_key, key = new_key(), new_key()
    lifetime = (datetime.timedelta(minutes=-5), datetime.timedelta(days=2))
    ca = "testbed pebble listener CA"
    ca_cert = issue(ca, ca, ca_key.public_key(), ca_key, ca=True, path_length=0,
                    valid=lifetime, strict=True)
    cert = issue("localhost", ca, key.public_key(), ca_key, ca=False, names=["localhost"],
                 ips=["127.0.0.1"], valid=lifetime, strict=True)
    ca_path = directory / "listener-ca.pem"
    cert_path = directory / "listener-cert.pem"
    key_path = directory / "listener-key.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    return ca_path, cert_path, key_path


# Validation always succeeds (nothing is ever contacted), without delays.
PEBBLE_ENV = {"PEBBLE_VA_ALWAYS_VALID": "1", "PEBBLE_WFE_NONCEREJECT": "0",
              "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_AUTHZREUSE": "100"}


def write_pebble_config(workdir: Path, acme_port: int, management_port: int
                        ) -> tuple[Path, Path]:
    """pebble's config file and its listener's certificate in ``workdir``, for
    127.0.0.1; returns (config file, the listener's CA certificate)."""
    ca, cert, key = _write_listener_certificate(workdir)
    config = {"pebble": {
        "listenAddress": f"127.0.0.1:{acme_port}",
        "managementListenAddress": f"127.0.0.1:{management_port}",
        "certificate": str(cert),
        "privateKey": str(key),
        # Never contacted: PEBBLE_VA_ALWAYS_VALID=1 skips validation.
        "httpPort": free_port(),
        "tlsPort": free_port(),
        "ocspResponderURL": "",
        "externalAccountBindingRequired": False,
    }}
    config_path = workdir / "pebble-config.json"
    config_path.write_text(json.dumps(config, indent=2))
    return config_path, ca


@dataclass
class Pebble:
    """A running pebble process. Start with :meth:`start`, stop with :meth:`stop`."""

    workdir: Path
    acme_port: int = 0
    management_port: int = 0
    ca_bundle: Path = Path()
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = Path()

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.acme_port}/dir"

    @classmethod
    def start(cls, workdir: Path) -> Pebble:
        # Debian installs it in /usr/bin, which a root PATH may lack in containers
        binary = shutil.which("pebble") or shutil.which("pebble", path="/usr/bin")
        if binary is None:
            raise TestbedError("pebble is not installed (apt-get install pebble)")
        workdir.mkdir(parents=True, exist_ok=True)
        acme_port, management_port = free_port(), free_port()
        config_path, ca = write_pebble_config(workdir, acme_port, management_port)
        self = cls(workdir=workdir, acme_port=acme_port, management_port=management_port,
                   ca_bundle=ca, log_path=workdir / "pebble.log")
        env = dict(os.environ, **PEBBLE_ENV)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [binary, "-config", str(config_path)], env=env, cwd=workdir,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        context = ssl.create_default_context(cafile=str(self.ca_bundle))
        last_error: list[Exception] = []

        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise TestbedError(
                    f"pebble exited with {self.process.returncode} before it was ready; "
                    f"log: {self.log_path}: {self.log_path.read_text(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(self.directory_url, context=context, timeout=2) as r:
                    return r.status == 200 and b"newOrder" in r.read()
            except OSError as exc:  # connection refused while it starts
                last_error[:] = [exc]
                return False

        try:
            wait_until(ready, PEBBLE_READY_TIMEOUT, f"pebble answering {self.directory_url}")
        except TimeoutError as exc:
            raise TestbedError(f"{exc} ({last_error[0] if last_error else 'no answer'}); "
                               f"log: {self.log_path}") from None

    def root_pem(self) -> bytes:
        """The PEM of the root that pebble issues under (from its management API)."""
        context = ssl.create_default_context(cafile=str(self.ca_bundle))
        url = f"https://127.0.0.1:{self.management_port}/roots/0"
        with urllib.request.urlopen(url, context=context, timeout=5) as r:
            return bytes(r.read())

    def stop(self) -> None:
        """Stop exactly the process this object started, by its PID."""
        if self.process is not None:
            stop_process(self.process)


def certbot_executable() -> str:
    """The ``certbot`` installed beside the running interpreter (the project's venv)."""
    beside = Path(sys.executable).parent / "certbot"
    if beside.exists():
        return str(beside)
    found = shutil.which("certbot")
    if found is None:
        raise TestbedError("certbot is not installed in this environment")
    return found


@dataclass
class Certbot:
    """The real certbot CLI with private directories, talking to one pebble."""

    pebble: Pebble
    root: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    as_user: list[str] = field(default_factory=list)  # an argv prefix: setpriv as that uid

    @property
    def config_dir(self) -> Path:
        return self.root / "config"

    @property
    def work_dir(self) -> Path:
        return self.root / "work"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    def live(self, name: str) -> Path:
        return self.config_dir / "live" / name

    def archive(self, name: str) -> Path:
        return self.config_dir / "archive" / name

    def env(self) -> dict[str, str]:
        env = dict(os.environ, REQUESTS_CA_BUNDLE=str(self.pebble.ca_bundle))
        env.update(self.extra_env)
        return env

    def command(self, subcommand: str, *args: str) -> list[str]:
        cmd = [certbot_executable(), subcommand,
               "--config-dir", str(self.config_dir),
               "--work-dir", str(self.work_dir),
               "--logs-dir", str(self.logs_dir),
               "--server", self.pebble.directory_url,
               "--non-interactive", "--agree-tos", "--register-unsafely-without-email"]
        if subcommand in ("certonly", "run", "renew"):
            cmd += ["--http-01-port", str(free_port())]
        if subcommand == "renew":
            cmd += ["--no-random-sleep-on-renew"]
        return cmd + list(args)

    def run(self, subcommand: str, *args: str, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``certbot SUBCOMMAND ...``; raise with its output if it fails and check is set."""
        result = subprocess.run([*self.as_user, *self.command(subcommand, *args)], env=self.env(),
                                capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise TestbedError(
                f"certbot {subcommand} failed with {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}")
        return result

    def certonly(self, name: str, domains: Sequence[str], *args: str,
                 check: bool = True) -> subprocess.CompletedProcess[str]:
        dom: list[str] = []
        for d in domains:
            dom += ["-d", d]
        return self.run("certonly", "--standalone", "--cert-name", name, *dom, *args, check=check)

    def renew(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("renew", *args, check=check)

"""Real daemons from Debian's packages, each on a loopback port with a config the test writes.

Each context manager starts one daemon as a private instance (no init system,
nothing of /etc/<daemon> read or changed), waits until its port answers, and
stops exactly the process it started, by its PID. ``served_serial`` asks the
daemon for its certificate with a real TLS client (``openssl s_client``).
"""
from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.pki import make_pair
from tests.support.procs import stop_pid, stop_process, wait_until
from tests.support.testbed import free_port

READY_TIMEOUT = 20.0


@dataclass
class Daemon:
    name: str
    port: int
    root: Path
    pid_file: Path
    check: str   # the config test, as a shell command
    reload: str  # the reload, as a shell command

    def pid(self) -> int:
        return int(self.pid_file.read_text().split()[0])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait_port(port: int, what: str, log: Path | None = None) -> None:
    try:
        wait_until(lambda: _listening(port), READY_TIMEOUT, f"{what} listening on port {port}")
    except TimeoutError as exc:
        tail = log.read_text(errors="replace")[-1500:] if log and log.exists() else ""
        raise RuntimeError(f"{exc}\n{tail}") from None


def _dir(path: Path, mode: int = 0o755) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(mode)
    return path


@contextmanager
def _foreground(daemon: Daemon, cmd: list[str], output: Path, log: Path) -> Iterator[Daemon]:
    """Run ``cmd`` (a daemon in the foreground, its output to ``output``), wait until it
    listens (showing ``log`` if it never does), and stop exactly that process."""
    with open(output, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=out, stdin=subprocess.DEVNULL)
    try:
        _wait_port(daemon.port, daemon.name, log)
        yield daemon
    finally:
        stop_process(proc, grace=15)


@contextmanager
def postfix(root: Path, chain_files: str) -> Iterator[Daemon]:
    """A private Postfix: smtpd with ``smtpd_tls_chain_files``, a fresh smtpd per connection."""
    root = _dir(root)
    port = free_port()
    _dir(root / "queue")
    _dir(root / "log")
    (root / "main.cf").write_text(f"""\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = mail.example.org
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
alias_maps =
alias_database =
local_recipient_maps =
notify_classes =
maillog_file_prefixes = {root}
maillog_file = {root}/log/maillog
smtpd_tls_security_level = may
smtpd_tls_chain_files = {chain_files}
""")
    (root / "master.cf").write_text(f"""\
127.0.0.1:{port} inet n - n - - smtpd -o max_use=1
tlsmgr unix - - n 1000? 1 tlsmgr
anvil unix - - n - 1 anvil
postlog unix-dgram n - n - 1 postlogd
""")
    daemon = Daemon("postfix", port, root, root / "queue" / "pid" / "master.pid",
                    check=f"postfix -c {root} check", reload=f"postfix -c {root} reload")
    subprocess.run(["postfix", "-c", str(root), "start"], check=True, capture_output=True,
                   timeout=60)
    try:
        _wait_port(port, "postfix", root / "log" / "maillog")
        yield daemon
    finally:
        if daemon.pid_file.exists():
            stop_pid(daemon.pid())


@contextmanager
def nginx(root: Path, cert: str, key: str) -> Iterator[Daemon]:
    """A private nginx master in the foreground, serving TLS with cert and key."""
    root = _dir(root)
    port = free_port()
    conf = root / "nginx.conf"
    conf.write_text(f"""\
daemon off;
master_process on;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {root}/tmp;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{ return 200 "ok\\n"; }}
    }}
}}
""")
    daemon = Daemon("nginx", port, root, root / "nginx.pid",
                    check=f"nginx -t -q -c {conf}", reload=f"nginx -c {conf} -s reload")
    with _foreground(daemon, ["nginx", "-c", str(conf)], root / "stdout.log",
                     root / "error.log") as running:
        yield running


@contextmanager
def haproxy(root: Path, crt: str) -> Iterator[Daemon]:
    """A private HAProxy (master-worker, foreground) terminating TLS with one crt file."""
    root = _dir(root)
    port = free_port()
    conf = root / "haproxy.cfg"
    conf.write_text(f"""\
global
    log stderr format raw local0 err
defaults
    mode http
    timeout connect 5s
    timeout client 5s
    timeout server 5s
frontend tls
    bind 127.0.0.1:{port} ssl crt {crt}
    http-request return status 200 content-type text/plain string ok
""")
    pid_file = root / "haproxy.pid"
    daemon = Daemon("haproxy", port, root, pid_file, check=f"haproxy -c -q -f {conf}",
                    reload=f"kill -USR2 $(cat {pid_file})")
    command = ["haproxy", "-W", "-db", "-f", str(conf), "-p", str(pid_file)]
    with _foreground(daemon, command, root / "haproxy.log", root / "haproxy.log") as running:
        yield running


@contextmanager
def dovecot(root: Path, cert: str, key: str) -> Iterator[Daemon]:
    """A private Dovecot (IMAP with STARTTLS only), foreground, its own base_dir."""
    root = _dir(root)
    port = free_port()
    conf = root / "dovecot.conf"
    conf.write_text(f"""\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
auth_mechanisms = plain
passdb {{
  driver = static
  args = nopassword=y
}}
userdb {{
  driver = static
  args = uid=65534 gid=65534 home={root}/home
}}
mail_location = maildir:{root}/home/mail
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
""")
    _dir(root / "run")
    _dir(root / "state")
    daemon = Daemon("dovecot", port, root, root / "run" / "master.pid",
                    check=f"doveconf -c {conf} -n > /dev/null",
                    reload=f"doveadm -c {conf} reload")
    with _foreground(daemon, ["dovecot", "-F", "-c", str(conf)], root / "stdout.log",
                     root / "dovecot.log") as running:
        yield running


@contextmanager
def mosquitto(root: Path, combined: str) -> Iterator[Daemon]:
    """A private Mosquitto (foreground) with a TLS listener on one key+fullchain file.

    As root it drops to the mosquitto user before it reads the key, as the packaged
    service does; SIGHUP makes it read the key and certificate again.
    """
    import pwd

    root = _dir(root)
    port = free_port()
    run = _dir(root / "run")
    entry = pwd.getpwnam("mosquitto")
    os.chown(run, entry.pw_uid, entry.pw_gid)  # it writes its pid file as that user
    conf = root / "mosquitto.conf"
    conf.write_text(f"""\
pid_file {run}/mosquitto.pid
persistence false
log_dest stderr
user mosquitto
listener {port} 127.0.0.1
certfile {combined}
keyfile {combined}
allow_anonymous true
""")
    daemon = Daemon("mosquitto", port, root, run / "mosquitto.pid", check="true",
                    reload=f"kill -HUP $(cat {run}/mosquitto.pid)")
    with _foreground(daemon, ["mosquitto", "-c", str(conf)], root / "mosquitto.log",
                     root / "mosquitto.log") as running:
        yield running


def served_serial(port: int, starttls: str | None = None, attempts: int = 3) -> int:
    """The serial of the certificate the daemon serves, via ``openssl s_client``."""
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
           "-servername", "mail.example.org"]
    if starttls:
        cmd += ["-starttls", starttls]
    last = ""
    for _ in range(attempts):
        hello = subprocess.run(cmd, input=b"", capture_output=True, timeout=30)
        cert = subprocess.run(["openssl", "x509", "-noout", "-serial"], input=hello.stdout,
                              capture_output=True, timeout=30)
        if cert.returncode == 0:
            return int(cert.stdout.decode().strip().split("=", 1)[1], 16)
        last = hello.stderr.decode(errors="replace")[-500:]
        time.sleep(0.5)
    raise AssertionError(f"no certificate served on port {port}: {last}")


def lineage_serial(live: Path) -> int:
    from cryptography import x509
    return int(x509.load_pem_x509_certificate((live / "cert.pem").read_bytes()).serial_number)


def seed(path: Path, order: str = "key-first") -> None:
    """A throwaway certificate where a daemon expects one, as a running server already has.

    ``path`` is a file (key then chain, or chain then key with order='key-last'),
    or, for a versioned directory, the directory: v0/ with every file and current -> v0.
    """
    pair = make_pair(["mail.example.org"])
    if path.suffix == ".pem":
        path.write_bytes(pair.key + pair.fullchain if order == "key-first"
                         else pair.fullchain + pair.key)
        path.chmod(0o600)
        return
    v0 = _dir(path / "v0")
    for name, data in (("privkey.pem", pair.key), ("cert.pem", pair.cert),
                       ("chain.pem", pair.chain), ("fullchain.pem", pair.fullchain),
                       ("combined.pem", pair.key + pair.fullchain)):
        (v0 / name).write_bytes(data)
        (v0 / name).chmod(0o600 if b"PRIVATE" in data else 0o644)
    (path / "current").symlink_to("v0")

"""Real daemons from Debian's packages, each on a loopback port with a config the test writes.

Each context manager starts one daemon as a private instance (no init system,
nothing of /etc/<daemon> read or changed), waits until its port answers, and
stops exactly the process it started, by its PID. ``served_serial`` asks the
daemon for its certificate with a real TLS client (``openssl s_client``).
"""
from __future__ import annotations

import os
import shutil
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


def wait_port(port: int, what: str, log: Path | None = None) -> None:
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
        wait_port(daemon.port, daemon.name, log)
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
        wait_port(port, "postfix", root / "log" / "maillog")
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


UNPACKED = Path("/var/cache/certbot-daemon-keys-tests/root")  # scripts/bootstrap.sh


def unpacked(path: str) -> Path:
    """A file of a package scripts/bootstrap.sh unpacked (not installed: it conflicts)."""
    return UNPACKED / path.lstrip("/")


@contextmanager
def _forking(daemon: Daemon, command: list[str], env: dict[str, str] | None = None
             ) -> Iterator[Daemon]:
    """Run ``command``, which starts the daemon in the background (it leaves its PID in
    ``daemon.pid_file``), wait until it listens, and stop that PID at the end."""
    with open(daemon.root / "log", "ab") as out:
        subprocess.run(command, env=env, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                       check=True, timeout=60)
    try:
        wait_port(daemon.port, daemon.name, daemon.root / "log")
        yield daemon
    finally:
        if daemon.pid_file.exists():
            stop_pid(daemon.pid())


@contextmanager
def _restartable(daemon: Daemon, start: str) -> Iterator[Daemon]:
    """A daemon its preset restarts. ``start`` (shell) starts it in the background,
    leaving its PID in ``daemon.pid_file``; ``daemon.reload`` becomes ROOT/restart, which
    stops that PID, waits until it is gone and starts it again, as ``systemctl restart``
    does. The instance running at the end, whichever start made it, is stopped by PID."""
    root = daemon.root
    (root / "start").write_text(f"#!/bin/sh\n{start}\n")
    (root / "restart").write_text(f"""#!/bin/sh
pid=$(cat {daemon.pid_file}) || exit 1
kill "$pid" || exit 1
while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
exec {root}/start
""")
    for script in ("start", "restart"):
        (root / script).chmod(0o755)
    daemon.reload = f"{root}/restart"
    with _forking(daemon, [f"{root}/start"]) as running:
        yield running


@contextmanager
def apache(root: Path, combined: str) -> Iterator[Daemon]:
    """A private Apache (event MPM, foreground) with one SSLCertificateFile holding the key
    too; the root parent reads it, ``-k graceful`` makes it read it again."""
    root = _dir(root)
    port = free_port()
    conf = root / "httpd.conf"
    modules = "/usr/lib/apache2/modules"
    conf.write_text(f"""\
ServerRoot {root}
ServerName mail.example.org
PidFile {root}/apache.pid
ErrorLog {root}/log
DefaultRuntimeDir {root}
Mutex file:{root} default
LoadModule mpm_event_module {modules}/mod_mpm_event.so
LoadModule socache_shmcb_module {modules}/mod_socache_shmcb.so
LoadModule ssl_module {modules}/mod_ssl.so
LoadModule authz_core_module {modules}/mod_authz_core.so
User www-data
Group www-data
Listen 127.0.0.1:{port} https
DocumentRoot {root}
<VirtualHost 127.0.0.1:{port}>
    SSLEngine on
    SSLCertificateFile {combined}
</VirtualHost>
""")
    daemon = Daemon("apache", port, root, root / "apache.pid", check=f"apache2 -t -f {conf}",
                    reload=f"apache2 -f {conf} -k graceful")
    with _foreground(daemon, ["apache2", "-f", str(conf), "-DFOREGROUND"], root / "stdout.log",
                     root / "log") as running:
        yield running


@contextmanager
def slapd(root: Path, combined: str) -> Iterator[Daemon]:
    """A private slapd (no database: TLS is what is tested) offering STARTTLS with one
    key+fullchain file, dropping to the openldap user as Debian's does; restarted."""
    import pwd

    root = _dir(root)
    port = free_port()
    run = _dir(root / "run")
    entry = pwd.getpwnam("openldap")
    os.chown(run, entry.pw_uid, entry.pw_gid)  # its pid file is written as that user
    conf = root / "slapd.conf"
    conf.write_text(f"""\
pidfile {run}/slapd.pid
TLSCertificateFile {combined}
TLSCertificateKeyFile {combined}
""")
    daemon = Daemon("slapd", port, root, run / "slapd.pid", check=f"slaptest -u -Q -f {conf}",
                    reload="")
    with _restartable(daemon, f"exec slapd -f {conf} -h ldap://127.0.0.1:{port}/ -u openldap "
                              f"-g openldap >>{root}/log 2>&1") as running:
        yield running


@contextmanager
def prosody(root: Path, combined: str) -> Iterator[Daemon]:
    """A private Prosody (client STARTTLS only), run as the prosody user as Debian's unit
    runs it; SIGHUP makes it load its certificates again."""
    import pwd

    root = _dir(root)
    port = free_port()
    data = _dir(root / "data")
    entry = pwd.getpwnam("prosody")
    os.chown(data, entry.pw_uid, entry.pw_gid)
    conf = root / "prosody.cfg.lua"
    conf.write_text(f"""\
pidfile = "{data}/prosody.pid"
data_path = "{data}"
log = {{ {{ levels = {{ min = "info" }}, to = "file", filename = "{data}/prosody.log" }} }}
modules_enabled = {{ "tls" }}
modules_disabled = {{ "s2s" }}
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {port} }}
c2s_direct_tls_ports = {{ }}
s2s_ports = {{ }}
s2s_direct_tls_ports = {{ }}
component_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
VirtualHost "mail.example.org"
    ssl = {{ certificate = "{combined}", key = "{combined}" }}
""")
    daemon = Daemon("prosody", port, root, data / "prosody.pid",
                    check=f"prosodyctl --config {conf} check config > /dev/null",
                    reload=f"kill -HUP $(cat {data}/prosody.pid)")
    command = ["setpriv", "--reuid=prosody", "--regid=prosody", "--init-groups",
               "prosody", "-F", "--config", str(conf)]
    with _foreground(daemon, command, root / "stdout.log", data / "prosody.log") as running:
        yield running


@contextmanager
def tomcat(root: Path, keystore: str, password: str) -> Iterator[Daemon]:
    """A private Tomcat (its own CATALINA_BASE, run as the tomcat user as Debian's unit
    runs it) with one HTTPS connector on a PKCS#12 keystore; restarted."""
    import pwd

    root = _dir(root)
    port = free_port()
    entry = pwd.getpwnam("tomcat")
    for name in ("logs", "temp", "webapps", "work"):
        os.chown(_dir(root / name), entry.pw_uid, entry.pw_gid)
    _dir(root / "conf")
    (root / "conf" / "server.xml").write_text(f"""\
<?xml version="1.0" encoding="UTF-8"?>
<Server port="-1" shutdown="SHUTDOWN">
  <Service name="Catalina">
    <Connector port="{port}" address="127.0.0.1" SSLEnabled="true" scheme="https" secure="true"
               protocol="org.apache.coyote.http11.Http11NioProtocol">
      <SSLHostConfig>
        <Certificate certificateKeystoreFile="{keystore}" certificateKeystoreType="PKCS12"
                     certificateKeystorePassword="{password}" certificateKeyAlias="mail"/>
      </SSLHostConfig>
    </Connector>
    <Engine name="Catalina" defaultHost="localhost">
      <Host name="localhost" appBase="webapps" unpackWARs="false" autoDeploy="false"/>
    </Engine>
  </Service>
</Server>
""")
    pid_file = root / "temp" / "tomcat.pid"
    daemon = Daemon("tomcat", port, root, pid_file, check="", reload="")
    home = "/usr/share/tomcat10"
    with _restartable(daemon, f"exec setpriv --reuid=tomcat --regid=tomcat --init-groups env -i "
                              f"PATH=/usr/bin:/bin CATALINA_HOME={home} CATALINA_BASE={root} "
                              f"CATALINA_PID={pid_file} CATALINA_TMPDIR={root}/temp "
                              f"{home}/bin/catalina.sh start >>{root}/log 2>&1") as running:
        yield running


@contextmanager
def exim(root: Path, combined: str) -> Iterator[Daemon]:
    """A private Exim 4 (Debian's exim4-daemon-light, unpacked) offering STARTTLS with one
    key+fullchain file. Given -C, Exim runs as Debian-exim throughout (the user whose
    processes read the key in the packaged daemon). Restarted: a SIGHUP re-executes
    /usr/sbin/exim4, which an unpacked package does not have."""
    import pwd

    root = _dir(root)
    port = free_port()
    spool = _dir(root / "spool")
    entry = pwd.getpwnam("Debian-exim")
    os.chown(spool, entry.pw_uid, entry.pw_gid)
    conf = root / "exim.conf"
    conf.write_text(f"""\
spool_directory = {spool}
log_file_path = {spool}/%slog
pid_file_path = {spool}/exim.pid
keep_environment =
primary_hostname = mail.example.org
daemon_smtp_ports = {port}
local_interfaces = 127.0.0.1
tls_advertise_hosts = *
tls_certificate = {combined}
""")
    binary = unpacked("/usr/sbin/exim4")
    daemon = Daemon("exim", port, root, spool / "exim.pid",
                    check=f"{binary} -C {conf} -bV > /dev/null", reload="")
    with _restartable(daemon, f"exec {binary} -C {conf} -bd >>{root}/log 2>&1") as running:
        yield running


@contextmanager
def opensmtpd(root: Path, combined: str) -> Iterator[Daemon]:
    """A private OpenSMTPD (Debian's package, unpacked) offering STARTTLS with one
    key+fullchain file, loaded by its root parent; restarted. Its spool, chroot and
    control socket paths are compiled in: it runs in a mount namespace the test makes,
    with empty tmpfs over /var/spool, /var/lib and /run."""
    root = _dir(root)
    port = free_port()
    conf = root / "smtpd.conf"
    conf.write_text(f"""\
pki mail.example.org cert "{combined}"
pki mail.example.org key "{combined}"
listen on 127.0.0.1 port {port} tls pki mail.example.org
action "local" mbox
match from any for domain "example.org" action "local"
""")
    binary = unpacked("/usr/sbin/smtpd")
    pid_file = root / "smtpd.pid"
    inside = root / "namespaced"
    inside.write_text(f"""#!/bin/sh
set -e
for d in /var/spool /var/lib /run; do mount -t tmpfs -o mode=755 tmpfs "$d"; done
mkdir -p /var/lib/opensmtpd/empty
mkdir -m 711 /var/spool/smtpd
echo $$ > {pid_file}
exec {binary} -d -f {conf}
""")
    inside.chmod(0o755)
    daemon = Daemon("opensmtpd", port, root, pid_file, check=f"{binary} -n -f {conf}",
                    reload="")
    with _restartable(daemon, f"setsid -f unshare --mount --propagation private {inside} "
                              f">>{root}/log 2>&1 </dev/null") as running:
        yield running


@contextmanager
def courier(root: Path, combined: str) -> Iterator[Daemon]:
    """A private Courier imapd-ssl (courier-imap unpacked, over courier-base's couriertcpd
    and couriertls) as Debian's init script starts it: couriertls reads TLS_CERTFILE on
    each connection, so there is nothing to reload."""
    root = _dir(root)
    port = free_port()
    pid_file = root / "couriertcpd.pid"
    daemon = Daemon("courier", port, root, pid_file, check="", reload="")
    env = {"PATH": "/usr/bin:/bin", "TLS_CERTFILE": combined, "TLS_VERIFYPEER": "NONE",
           "IMAP_TLS": "1"}
    command = ["/usr/sbin/couriertcpd", "-address=127.0.0.1", "-nodnslookup",
               "-noidentlookup", f"-pid={pid_file}", str(port), "/usr/bin/couriertls",
               "-server", "-tcpd", "-user=courier",
               str(unpacked("/usr/lib/courier/courier/imaplogin")),
               str(unpacked("/usr/bin/imapd")), "Maildir"]
    with _forking(daemon, command, env) as running:
        yield running


def sendmail_cf(root: Path, combined: str, dont_blame: str = "") -> Path:
    """ROOT/sendmail.cf, made by m4 from Debian's sendmail-cf as sendmailconfig makes it:
    an MTA on ROOT/port with STARTTLS on one key+fullchain file (confSERVER_CERT and
    confSERVER_KEY), ``DontBlameSendmail=dont_blame``."""
    cf_dir = unpacked("/usr/share/sendmail/cf")
    port = int((root / "port").read_text())
    defines = {"confPID_FILE": f"{root}/sendmail.pid", "QUEUE_DIR": f"{root}/queue",
               "STATUS_FILE": f"{root}/statistics", "ALIAS_FILE": "",
               "confDOMAIN_NAME": "mail.example.org", "confSERVER_CERT": combined,
               "confSERVER_KEY": combined, "confCACERT_PATH": "/etc/ssl/certs",
               "confCACERT": "/etc/ssl/certs/ca-certificates.crt",
               "confDONT_PROBE_INTERFACES": "True", "confDONT_BLAME_SENDMAIL": dont_blame}
    mc = root / "sendmail.mc"
    mc.write_text("".join([
        f"include(`{cf_dir}/m4/cf.m4')dnl\nOSTYPE(`linux')dnl\n",
        *(f"define(`{name}', `{value}')dnl\n" for name, value in defines.items()),
        "FEATURE(`no_default_msa')dnl\n",
        f"DAEMON_OPTIONS(`Family=inet, Name=MTA, Port={port}, Addr=127.0.0.1')dnl\n",
        "MAILER(`local')dnl\nMAILER(`smtp')dnl\n"]))
    cf = root / "sendmail.cf"
    with open(cf, "wb") as out:
        subprocess.run(["m4", f"-D_CF_DIR_={cf_dir}/", str(mc)], stdout=out, check=True,
                       timeout=60)
    return cf


@contextmanager
def sendmail(root: Path, combined: str) -> Iterator[Daemon]:
    """A private sendmail (Debian's sendmail-bin and sendmail-cf, unpacked) with STARTTLS on
    one key+fullchain file; SIGHUP makes it start again on its config and key. ``root``
    must be below no world-writable directory (sendmail's own rule). It runs in a UTS and
    mount namespace the test makes, named mail.example.org by a hosts file of its own
    (an unqualified host name makes it sleep a minute) and resolving nothing else; its
    check runs in there too."""
    root = _dir(root)
    port = free_port()
    (root / "port").write_text(f"{port}\n")
    _dir(root / "queue", 0o700)
    cf = sendmail_cf(root, combined)
    (root / "hosts").write_text("127.0.0.1 mail.example.org mail localhost\n")
    (root / "resolv.conf").write_text("nameserver 127.0.0.1\n")
    binary = unpacked("/usr/libexec/sendmail/sendmail")
    inside = root / "namespaced"
    inside.write_text(f"""#!/bin/sh
set -e
hostname mail.example.org
mount --bind {root}/hosts /etc/hosts
mount --bind {root}/resolv.conf /etc/resolv.conf
exec {binary} -C {cf} -bd
""")
    inside.chmod(0o755)
    pid_file = root / "sendmail.pid"
    daemon = Daemon("sendmail", port, root, pid_file,
                    check=f"nsenter --target $(head -n 1 {pid_file}) --uts --mount "
                          f"{binary} -C {cf} -bt < /dev/null > /dev/null",
                    reload=f"kill -HUP $(head -n 1 {pid_file})")
    with _forking(daemon, ["unshare", "--uts", "--mount", "--propagation", "private",
                           str(inside)]) as running:
        yield running


LDAPS = 636


@contextmanager
def samba(root: Path, key: str, cert: str) -> Iterator[Daemon]:
    """A private Samba AD DC (provisioned into ``root``, only its LDAP server running, on
    127.0.0.1's fixed LDAP ports) with ``tls keyfile`` and ``tls certfile``; restarted,
    as its LDAP server loads TLS only when it starts."""
    root = _dir(root)
    if _listening(LDAPS) or _listening(389):
        raise RuntimeError("something on this machine already listens on port 389 or 636")
    options = {"interfaces": "127.0.0.1", "bind interfaces only": "yes",
               "server services": "ldap", "log file": f"{root}/log",
               "pid directory": f"{root}/run", "tls enabled": "yes", "tls keyfile": key,
               "tls certfile": cert, "tls cafile": ""}
    _dir(root / "run")
    provision = subprocess.run(
        ["samba-tool", "domain", "provision", f"--targetdir={root}/dc",
         "--realm=EXAMPLE.ORG", "--domain=EXAMPLE", "--server-role=dc",
         "--dns-backend=NONE", "--host-name=dc1", "--host-ip=127.0.0.1",
         "--adminpass=Adm1n-Passw0rd-for-a-test",
         *(f"--option={name} = {value}" for name, value in options.items())],
        capture_output=True, text=True, timeout=300)
    if provision.returncode != 0:
        raise RuntimeError(f"samba-tool domain provision failed: {provision.stderr[-1500:]}")
    conf = root / "dc" / "etc" / "smb.conf"
    _dir(root / "dc" / "cache")  # testparm fails until it exists
    daemon = Daemon("samba", LDAPS, root, root / "run" / "samba.pid",
                    check=f"testparm -s {conf} > /dev/null 2>&1", reload="")
    with _restartable(daemon, f"exec samba -s {conf} >>{root}/log 2>&1") as running:
        yield running


def offers_starttls(port: int) -> bool | None:
    """Whether the SMTP server on ``port`` offers STARTTLS in its EHLO reply (None while
    it does not answer)."""
    import smtplib

    try:
        with smtplib.SMTP("127.0.0.1", port, "client.example.org", timeout=10) as smtp:
            smtp.ehlo()
            return smtp.has_extn("starttls")
    except (OSError, smtplib.SMTPException):
        return None


def serves(port: int, serial: int, starttls: str | None = None) -> bool:
    """Whether the daemon answers on ``port`` with the certificate ``serial`` (False while
    it is not answering, as during a restart)."""
    try:
        return served_serial(port, starttls, attempts=1) == serial
    except AssertionError:
        return False


def served_serial(port: int, starttls: str | None = None, attempts: int = 3) -> int:
    """The serial of the certificate the daemon serves, via ``openssl s_client``."""
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
           "-servername", "mail.example.org"]
    if starttls:
        cmd += ["-starttls", starttls]
    if starttls == "xmpp":
        cmd += ["-xmpphost", "mail.example.org"]
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


def seed(path: Path, order: str = "key-first", owner: str = "root", group: str = "root",
         mode: int = 0o600) -> None:
    """A throwaway certificate where a daemon expects one, as a running server already has.

    ``path`` is a file (key then chain, or chain then key with order='key-last'; a
    PKCS#12 keystore, password 'changeit', alias 'mail', for a .p12), with that owner,
    group and mode; or, for a versioned directory, the directory: v0/ with every file
    and current -> v0.
    """
    pair = make_pair(["mail.example.org"])
    if path.suffix in (".pem", ".p12"):
        if path.suffix == ".p12":
            subprocess.run(["openssl", "pkcs12", "-export", "-name", "mail",
                            "-passout", "pass:changeit", "-out", str(path)],
                           input=pair.key + pair.fullchain, check=True,
                           capture_output=True, timeout=30)
        else:
            path.write_bytes(pair.key + pair.fullchain if order == "key-first"
                             else pair.fullchain + pair.key)
        shutil.chown(path, owner, group)
        path.chmod(mode)
        return
    v0 = _dir(path / "v0")
    for name, data in (("privkey.pem", pair.key), ("cert.pem", pair.cert),
                       ("chain.pem", pair.chain), ("fullchain.pem", pair.fullchain),
                       ("combined.pem", pair.key + pair.fullchain)):
        (v0 / name).write_bytes(data)
        (v0 / name).chmod(0o600 if b"PRIVATE" in data else 0o644)
    (path / "current").symlink_to("v0")

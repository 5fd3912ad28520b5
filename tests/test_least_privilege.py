"""Least privilege (issue 13): certbot as an unprivileged user, a root deployer that
trusts nothing it wrote.

The real pieces: certbot runs as a user of its own (setpriv) against pebble and owns
its config, work and logs dirs; its deploy hook is ``certbot-atomic-deploy notify``,
which only drops a marker into a spool that user owns. The root side runs exactly
what the shipped unit runs (``ROOT_DEPLOY``), with its config in a root-owned
directory. Every attack below is made by that user on the lineage it owns (as that
user where the kernel lets it), and each is refused in one line naming the lineage,
the file and the reason, with nothing written, no hang, and the other lineages
deployed all the same.
"""
from __future__ import annotations

import grp
import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import container
from tests.support.daemons import lineage_serial, postfix, seed, served_serial
from tests.support.figures import report
from tests.support.pki import make_chain, pem_of
from tests.support.procs import wait_until
from tests.support.site import DEPLOY, mode_of
from tests.support.testbed import PEBBLE_ENV, Certbot, Pebble, write_pebble_config
from tests.support.users import as_user

HOOK_PATH = f"{Path(DEPLOY).parent}:/usr/sbin:/usr/bin:/sbin:/bin"


def root_deploy(config: Path, config_dir: Path, spool: Path) -> list[str]:
    """The root deployer's command line, as certbot-atomic-deploy.service runs it."""
    return [DEPLOY, "--config", str(config), "--config-dir", str(config_dir), "deploy",
            "--spool", str(spool)]


@dataclass
class Split:
    """An unprivileged certbot (``certbot``, as ``user``), its spool, and the root side's
    directory (``root``: the deploy config and its state) and targets (``out``)."""

    certbot: Certbot
    user: str
    uid: int
    gid: int
    spool: Path
    root: Path
    out: Path

    def deploy(self, conf_dir: Path, config_dir: Path | None = None
               ) -> subprocess.CompletedProcess[str]:
        """The root deployer with CONF_DIR/atomic-deploy.conf (its state beside it)."""
        return subprocess.run(root_deploy(conf_dir / "atomic-deploy.conf",
                                          config_dir or self.certbot.config_dir, self.spool),
                              capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)

    def as_user(self, script: str, cwd: Path) -> None:
        subprocess.run([*as_user(self.uid, self.gid), "sh", "-euc", script], cwd=cwd,
                       check=True, timeout=60, capture_output=True)


@pytest.fixture(scope="module")
def split(pebble: Pebble, outsider_python: str) -> Iterator[Split]:
    """Lineages 'mail' and 'web', issued by certbot running as a user of its own."""
    top = Path(tempfile.mkdtemp(prefix="cdk-test-"))
    top.chmod(0o755)
    name = f"cdkc{secrets.token_hex(3)}"
    subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--shell",
                    "/usr/sbin/nologin", name], check=True, timeout=30)
    try:
        entry = pwd.getpwnam(name)
        home = top / "certbot"
        spool = top / "spool"
        for path in (home, spool):
            path.mkdir(mode=0o755)
            os.chown(path, entry.pw_uid, entry.pw_gid)
        root = top / "root"
        out = top / "out"
        for path in (root, out):
            path.mkdir(mode=0o755)
        bundle = top / "acme-ca.pem"  # pebble's listener CA, where that user can read it
        shutil.copyfile(pebble.ca_bundle, bundle)
        bundle.chmod(0o644)
        certbot = Certbot(pebble=pebble, root=home,
                          extra_env={"REQUESTS_CA_BUNDLE": str(bundle), "PATH": HOOK_PATH},
                          as_user=as_user(entry.pw_uid, entry.pw_gid))
        for lineage in ("mail", "web"):
            certbot.certonly(lineage, [f"{lineage}.example.org"], "--deploy-hook",
                             f"certbot-atomic-deploy notify --spool {spool}")
        yield Split(certbot, name, entry.pw_uid, entry.pw_gid, spool, root, out)
    finally:
        shutil.rmtree(top, ignore_errors=True)
        subprocess.run(["userdel", name], check=False, timeout=30)
        subprocess.run(["groupdel", name], check=False, timeout=30)


def _conf(directory: Path, body: str) -> None:
    (directory / "atomic-deploy.conf").write_text(body)


def test_certbot_as_its_own_user_owns_its_dirs_and_only_signals(split: Split) -> None:
    live = split.certbot.live("mail")
    for path in (split.certbot.config_dir, split.certbot.work_dir, split.certbot.logs_dir,
                 live / "privkey.pem"):
        assert os.stat(path).st_uid == split.uid, path
    markers = sorted(p.name for p in split.spool.iterdir())
    assert markers == ["mail", "web"]  # the deploy hook ran, as that user, and wrote there
    assert all(p.stat().st_uid == split.uid for p in split.spool.iterdir())


@pytest.mark.daemon
def test_the_root_deployer_publishes_what_the_unprivileged_certbot_renews_to_postfix(
        split: Split) -> None:
    tls = split.out / "postfix"
    tls.mkdir(mode=0o755)
    seed(tls / "mail.pem")
    with postfix(split.root / "postfix", f"{tls}/mail.pem") as daemon:
        _conf(split.root, f"[postfix]\npreset = postfix\nlineage = mail\npath = {tls}/mail.pem\n"
                     f"check = {daemon.check}\nreload = {daemon.reload}\n")
        first = split.deploy(split.root)
        assert first.returncode == 0, first.stderr
        assert "took 2 marker(s): mail, web" in first.stdout
        assert not any(split.spool.iterdir())
        live = split.certbot.live("mail")
        assert served_serial(daemon.port, "smtp") == lineage_serial(live)
        before = lineage_serial(live)
        split.certbot.renew("--cert-name", "mail", "--force-renewal")
        assert [p.name for p in split.spool.iterdir()] == ["mail"]
        second = split.deploy(split.root)
        assert second.returncode == 0, second.stderr
        assert served_serial(daemon.port, "smtp") == lineage_serial(live) != before
        assert mode_of(tls / "mail.pem") == 0o600 and (tls / "mail.pem").stat().st_uid == 0


# Each attack: (what the user does, as a shell script run as that user in the config
# dir's copy, or a Python function run as root where the kernel would refuse the user;
# the words the refusal must hold).
ROOT_ONLY_KEY = "root-only.key"


def _hard_link(config_dir: Path, n: int) -> None:
    # protected_hardlinks stops the user linking a file it does not own; a root-owned
    # file linked in by whatever means must be refused all the same.
    target = config_dir / "archive" / "mail" / f"privkey{n}.pem"
    target.unlink()
    os.link(config_dir.parent / ROOT_ONLY_KEY, target)


def _self_made_ca(config_dir: Path, n: int) -> None:
    key, chain = make_chain(["mail.example.org"])
    from cryptography.hazmat.primitives import serialization
    pems = [c.public_bytes(serialization.Encoding.PEM) for c in chain]
    archive = config_dir / "archive" / "mail"
    for kind, data in (("privkey", pem_of(key)), ("cert", pems[0]),
                       ("chain", b"".join(pems[1:])), ("fullchain", b"".join(pems))):
        (archive / f"{kind}{n}.pem").write_bytes(data)


# {n}: the lineage's current version, in scripts and refusals.
ATTACKS: dict[str, tuple[str | Callable[[Path, int], None], str]] = {
    "live link to /etc/shadow": (
        "ln -sfn /etc/shadow live/mail/privkey.pem",
        "live/mail/privkey.pem: points to /etc/shadow, not to ../../archive/mail/privkeyN.pem"),
    "live link to another lineage": (
        "ln -sfn ../../archive/web/privkey1.pem live/mail/privkey.pem",
        "points to ../../archive/web/privkey1.pem, not to ../../archive/mail/privkeyN.pem"),
    "archive key links to a root-only key elsewhere": (
        f"rm archive/mail/privkey{{n}}.pem; "
        f"ln -s ../../../{ROOT_ONLY_KEY} archive/mail/privkey{{n}}.pem",
        f"archive/mail/privkey{{n}}.pem: links to ../../../{ROOT_ONLY_KEY}, outside the "
        "lineage's archive"),
    "archive dir swapped for a link to another lineage's": (
        "mv archive/mail archive/mail.old; ln -s web archive/mail",
        "archive/mail: is a symlink; refusing to follow it"),
    "hard link of a root-only file": (
        _hard_link, "archive/mail/privkey{n}.pem: owned by uid 0, not by the config dir's owner"),
    "FIFO as the key": (
        "rm archive/mail/privkey{n}.pem; mkfifo archive/mail/privkey{n}.pem",
        "archive/mail/privkey{n}.pem: not a regular file"),
    "1 GB certificate": (
        "truncate -s 1G archive/mail/cert{n}.pem",
        "archive/mail/cert{n}.pem: larger than 1048576 bytes"),
    "a pair from a CA of its own": (
        _self_made_ca, "which none of the 1 pinned issuers issued ([defaults] issuers)"),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_an_attack_by_the_acme_client_is_refused_and_nothing_is_written(
        split: Split, attack: str) -> None:
    work = Path(tempfile.mkdtemp(prefix="cdk-attack-", dir=split.root))
    work.chmod(0o755)  # the user reaches its copy of the config dir through it
    try:
        config_dir = work / "config"
        subprocess.run(["cp", "-a", str(split.certbot.config_dir), str(config_dir)],
                       check=True, timeout=60)
        key = work / ROOT_ONLY_KEY
        key.write_bytes(pem_of(make_chain(["secret.example.org"])[0]))
        key.chmod(0o600)
        issuers = work / "issuers.pem"
        issuers.write_bytes(split.certbot.pebble.root_pem())
        out = work / "out"
        out.mkdir(mode=0o755)
        targets = (f"[defaults]\nissuers = {issuers}\n\n"
                   f"[mail]\nlineage = mail\npath = {out}/mail.pem\nformat = postfix\n")
        _conf(work, targets)
        first = split.deploy(work, config_dir)
        assert first.returncode == 0, first.stderr
        published = (out / "mail.pem").read_bytes()

        how, refusal = ATTACKS[attack]
        n = int(re.findall(r"[0-9]+", os.readlink(config_dir / "live" / "mail" /
                                                  "privkey.pem"))[-1])
        refusal = refusal.format(n=n)
        if callable(how):
            how(config_dir, n)
        else:
            split.as_user(how.format(n=n), config_dir)
        _conf(work, targets + f"\n[web]\nlineage = web\npath = {out}/web.pem\n"
                               "format = postfix\n")
        refused = split.deploy(work, config_dir)  # bounded: a FIFO must not hang it
        assert refused.returncode == 1, refused.stdout + refused.stderr
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("certbot-atomic-deploy: [mail]"), lines
        assert refusal in lines[0], lines[0]
        assert (out / "mail.pem").read_bytes() == published  # nothing written
        assert sorted(p.name for p in out.iterdir()) == ["mail.pem", "web.pem"]  # no temp
        assert b"PRIVATE KEY" in (out / "web.pem").read_bytes()  # the other lineage went on
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_a_deploy_config_the_acme_client_writes_is_refused_and_never_run(
        split: Split) -> None:
    """The root side's default config path is inside certbot's config dir: one written
    there by that user is refused (its commands would run as root), and none of them runs."""
    planted = split.certbot.config_dir / "atomic-deploy.conf"
    proof = split.root / "pwned"
    split.as_user(f"printf '[x]\\nlineage = mail\\npath = {split.out}/x.pem\\nformat = key\\n"
                  f"reload = touch {proof}\\n' > {planted}", split.certbot.config_dir)
    try:
        result = subprocess.run([DEPLOY, "--config-dir", str(split.certbot.config_dir),
                                 "deploy", "--all"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2
        assert f"{planted}: refused" in result.stderr
        assert f"owned by uid {split.uid}" in result.stderr
        assert not proof.exists() and not (split.out / "x.pem").exists()
    finally:
        planted.unlink()


def test_notify_writes_only_a_marker_and_takes_no_config(split: Split, tmp_path: Path) -> None:
    """The hook the unprivileged certbot runs reads no config (a broken one changes
    nothing) and writes one marker, that user's, into the spool."""
    spool = split.root / "spool-notify"
    spool.mkdir(mode=0o755)
    os.chown(spool, split.uid, split.gid)
    try:
        env = dict(os.environ, RENEWED_LINEAGE=str(split.certbot.live("mail")))
        done = subprocess.run([*as_user(split.uid, split.gid), DEPLOY, "--config",
                               "/nonexistent.conf", "notify", "--spool", str(spool)],
                              env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert [p.name for p in spool.iterdir()] == ["mail"]
        assert (spool / "mail").stat().st_uid == split.uid
        assert grp.getgrgid((spool / "mail").stat().st_gid).gr_name == split.user
    finally:
        shutil.rmtree(spool)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_units_are_made_from_the_config_run_what_the_tests_run_and_verify(
        split: Split) -> None:
    """`units` writes certbot's drop-in, the root service (exactly ``root_deploy``'s
    command line; writable: the target directories, its state, the spool), the path unit
    and the timer; systemd-analyze verify says nothing about any of them; a second run
    writes the same bytes."""
    work = Path(tempfile.mkdtemp(prefix="cdk-units-", dir=split.root))
    try:
        conf_dir, out = work / "conf", work / "srv"
        for path in (conf_dir, out / "postfix", out / "web"):
            path.mkdir(parents=True, mode=0o755)
        _conf(conf_dir, f"[defaults]\nmetrics_file = {out}/metrics/certs.prom\n\n"
                        f"[postfix]\nlineage = mail\npath = {out}/postfix/mail.pem\n"
                        f"format = postfix\n\n[web]\nlineage = web\ndirectory = {out}/web/tls\n")
        (out / "metrics").mkdir(mode=0o755)
        units = work / "units"
        config = conf_dir / "atomic-deploy.conf"
        command = [DEPLOY, "--config", str(config), "--config-dir",
                   str(split.certbot.config_dir), "units", "--output", str(units),
                   "--spool", str(split.spool), "--user", split.user]
        made = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert made.returncode == 0, made.stderr
        names = sorted(str(p.relative_to(units)) for p in units.rglob("*") if p.is_file())
        assert names == ["certbot-atomic-deploy.path", "certbot-atomic-deploy.service",
                         "certbot-atomic-deploy.timer", "certbot.service.d/least-privilege.conf"]
        service = (units / "certbot-atomic-deploy.service").read_text()
        exec_start = next(line for line in service.splitlines() if line.startswith("ExecStart="))
        assert exec_start == "ExecStart=" + " ".join(
            root_deploy(config, split.certbot.config_dir, split.spool))
        writable = next(line for line in service.splitlines()
                        if line.startswith("ReadWritePaths=")).split("=", 1)[1].split()
        assert sorted(writable) == sorted([f"{conf_dir}/atomic-deploy.state", f"{out}/metrics",
                                           f"{out}/postfix", f"{out}/web/tls", str(split.spool)])
        assert mode_of(conf_dir / "atomic-deploy.state") == 0o700  # made for the service
        dropin = (units / "certbot.service.d" / "least-privilege.conf").read_text()
        assert f"User={split.user}\n" in dropin and "CapabilityBoundingSet=\n" in dropin
        assert f"DirectoryNotEmpty={split.spool}\n" in (
            units / "certbot-atomic-deploy.path").read_text()

        before = {n: (units / n).read_bytes() for n in names}
        again = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0 and {n: (units / n).read_bytes() for n in names} == before

        shutil.copy("/lib/systemd/system/certbot.service", units)  # Debian's, for the drop-in
        verify = subprocess.run(
            ["systemd-analyze", "verify", "certbot.service", "certbot-atomic-deploy.service",
             "certbot-atomic-deploy.path", "certbot-atomic-deploy.timer"],
            cwd=units, capture_output=True, text=True, timeout=60)
        assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _installed_copy(directory: Path) -> Path:
    """This run's certbot_atomic_deploy and daemon_keys (the installed wheel's, or the
    checkout's) copied into DIRECTORY/lib, with a launcher DIRECTORY/bin/certbot-atomic-deploy
    on the system python3 (in the container: Debian's, with Debian's cryptography)."""
    import certbot_atomic_deploy
    import daemon_keys
    for package in (certbot_atomic_deploy, daemon_keys):
        source = Path(str(package.__file__)).parent
        shutil.copytree(source, directory / "lib" / source.name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    launcher = directory / "bin" / "certbot-atomic-deploy"
    launcher.parent.mkdir()
    launcher.write_text(f"#!/usr/bin/python3 -I\nimport sys\nsys.path.insert(0, "
                        f"'{directory}/lib')\nfrom certbot_atomic_deploy.cli import main\n"
                        "sys.exit(main())\n")
    launcher.chmod(0o755)
    subprocess.run(["chmod", "-R", "go+rX", str(directory)], check=True)
    return launcher


CONTAINER_CONF = "/etc/certbot-atomic-deploy/atomic-deploy.conf"
CONTAINER_PEM = "/etc/postfix/tls/mail.pem"


def _postfix_target(ct: container.Container, seed_pem: Path) -> None:
    """In the container: the root side's config (one Postfix target for lineage mail)
    and Postfix serving STARTTLS on its loopback from that file, seeded."""
    conf, pem = CONTAINER_CONF, CONTAINER_PEM
    ct.run("mkdir", "-p", os.path.dirname(conf), os.path.dirname(pem))
    ct.run("sh", "-c", f"cat > {conf}", input=f"[postfix]\npreset = postfix\n"
                                              f"lineage = mail\npath = {pem}\n")
    ct.run("install", "-m", "600", str(seed_pem), pem)
    ct.run("postconf", "-e", f"smtpd_tls_chain_files = {pem}", "smtpd_tls_security_level "
           "= may", "inet_interfaces = loopback-only", "inet_protocols = ipv4")
    ct.run("systemctl", "restart", "postfix")


def _serving(ct: container.Container) -> int | None:
    """The serial the container's Postfix serves on STARTTLS (None: no certificate)."""
    hello = ct.in_network("openssl", "s_client", "-connect", "127.0.0.1:25", "-starttls",
                          "smtp")
    cert = subprocess.run(["openssl", "x509", "-noout", "-serial"], input=hello.stdout,
                          capture_output=True, timeout=30)
    return int(cert.stdout.decode().split("=", 1)[1], 16) if cert.returncode == 0 else None


@pytest.mark.daemon
@pytest.mark.skipif(not container.ROOT.is_dir() or shutil.which("systemd-nspawn") is None,
                    reason=f"{container.ROOT} and systemd-nspawn: scripts/bootstrap.sh")
def test_the_shipped_units_booted_publish_what_an_unprivileged_certbot_renews(
        pebble: Pebble, outsider_python: str, user: str, run_dir: Path) -> None:
    """Debian 12 booted in systemd-nspawn runs the units `units` made and a real Postfix;
    certbot runs here as its own user on a config dir the container sees. Its notify hook
    drops a marker; the path unit starts the root service, which publishes and reloads
    Postfix (the new serial served). A marker dropped while the service runs starts it
    again; one the path unit missed is taken by the timer."""
    entry = pwd.getpwnam(user)
    uid, gid = entry.pw_uid, entry.pw_gid
    home, spool = run_dir / "certbot", run_dir / "spool"
    for path in (home, spool, home / "config"):
        path.mkdir(mode=0o755)
        os.chown(path, uid, gid)
    launcher = _installed_copy(run_dir / "deployer")
    bundle = run_dir / "acme-ca.pem"
    shutil.copyfile(pebble.ca_bundle, bundle)
    bundle.chmod(0o644)
    certbot = Certbot(pebble=pebble, root=home, as_user=as_user(uid, gid),
                      extra_env={"REQUESTS_CA_BUNDLE": str(bundle), "PATH": HOOK_PATH})
    conf, pem = CONTAINER_CONF, CONTAINER_PEM
    seed(run_dir / "seed.pem")
    with container.booted([run_dir]) as ct:
        _postfix_target(ct, run_dir / "seed.pem")
        ct.run(str(launcher), "--config", conf, "--config-dir", str(certbot.config_dir),
               "units", "--output", "/etc/systemd/system", "--spool", str(spool), "--user",
               str(uid))
        ct.run("systemctl", "daemon-reload")
        ct.run("systemctl", "enable", "--now", "certbot-atomic-deploy.path",
               "certbot-atomic-deploy.timer")

        # The hook stamps the time it starts: the marker itself cannot tell, the path unit
        # may have taken it (and the service removed it) before certbot returns.
        stamp = home / "notified"

        def published_within(what: str) -> None:
            signalled = float(stamp.read_text())
            wanted = lineage_serial(certbot.live("mail"))
            wait_until(lambda: _serving(ct) == wanted, 60, f"postfix serving {what}",
                       interval=0.02)
            served = time.time()
            report(f"least privilege, units booted in nspawn: {what}: certbot's deploy hook "
                   f"to Postfix serving the new serial {served - signalled:.2f} s")

        certbot.certonly("mail", ["mail.example.org"], "--deploy-hook",
                         f"date +%s.%N > {stamp} && "
                         f"certbot-atomic-deploy notify --spool {spool}")
        published_within("issuance")
        certbot.renew("--force-renewal")
        published_within("renewal")
        wait_until(lambda: not any(spool.iterdir()), 30, "the spool emptied")

        # A marker dropped while the service runs is not lost: the path unit starts it again.
        # The renewal's run has taken its marker and published when the file changes; its
        # check then sleeps 2 s, and the marker dropped then must start another run.
        ct.run("sh", "-c", f"cat >> {conf}", input="check = sleep 2\n")
        certbot.renew("--force-renewal")
        renewed = lineage_serial(certbot.live("mail"))

        def published() -> int | None:
            cert = ct.run("openssl", "x509", "-noout", "-serial", "-in", pem, check=False)
            return int(cert.stdout.split("=", 1)[1], 16) if cert.returncode == 0 else None
        wait_until(lambda: published() == renewed, 30, "the renewal published", interval=0.02)
        assert ct.run("systemctl", "is-active", "certbot-atomic-deploy.service",
                      check=False).stdout.strip() == "activating"  # in its 2 s check
        notify = [*as_user(uid, gid), DEPLOY, "notify", "--spool", str(spool)]
        subprocess.run([*notify, "--lineage", "during"], check=True, timeout=60)
        journal = ["journalctl", "-q", "-u", "certbot-atomic-deploy.service", "-o", "cat"]
        wait_until(lambda: "took 1 marker(s): during" in ct.run(*journal).stdout, 60,
                   "a run taking the marker dropped during the previous run")

        # One the path unit never saw (it was stopped) is taken by the timer.
        ct.run("systemctl", "stop", "certbot-atomic-deploy.path")
        subprocess.run([*notify, "--lineage", "missed"], check=True, timeout=60)
        ct.run("mkdir", "-p", "/etc/systemd/system/certbot-atomic-deploy.timer.d")
        ct.run("sh", "-c", "cat > /etc/systemd/system/certbot-atomic-deploy.timer.d/soon.conf",
               input="[Timer]\nOnActiveSec=1s\nRandomizedDelaySec=0\n")  # due now
        ct.run("systemctl", "daemon-reload")
        ct.run("systemctl", "restart", "certbot-atomic-deploy.timer")
        wait_until(lambda: "took 1 marker(s): missed" in ct.run(*journal).stdout, 60,
                   "the timer's run taking the missed marker")
        assert not any(spool.iterdir())


# Run as the daemon's user: open key and chain for reading, then each write must fail
# with EACCES (write the key, create beside current/ or in it, rename or remove).
READ_ONLY_PROBE = """
import os, sys
cur = os.path.join(sys.argv[1], "current")
for f in ("privkey.pem", "fullchain.pem"):
    os.close(os.open(os.path.join(cur, f), os.O_RDONLY))
new = os.O_WRONLY | os.O_CREAT
tries = [lambda: os.open(os.path.join(cur, "privkey.pem"), os.O_WRONLY),
         lambda: os.open(os.path.join(sys.argv[1], "new"), new, 0o600),
         lambda: os.open(os.path.join(cur, "x"), new, 0o600),
         lambda: os.rename(cur, cur + ".old"),
         lambda: os.unlink(os.path.join(cur, "privkey.pem"))]
for i, attempt in enumerate(tries):
    try:
        attempt()
    except PermissionError:
        continue
    sys.exit(f"write {i} succeeded")
"""


def test_the_daemons_user_reads_its_key_and_can_write_nothing_there(
        split: Split, user: str, group: str) -> None:
    """Servers only read: the daemon's user (in the target's group) opens the published key
    and certificate, and can neither write them nor add, replace or remove anything in the
    target directory."""
    work = Path(tempfile.mkdtemp(prefix="cdk-reader-", dir=split.root))
    work.chmod(0o755)
    try:
        subprocess.run(["usermod", "-a", "-G", group, user], check=True, timeout=30)
        out = work / "tls"
        out.mkdir(mode=0o755)
        _conf(work, f"[daemon]\nlineage = mail\ndirectory = {out}\ngroup = {group}\n"
                    f"mode = 0640\nreader = {user}\n")
        done = split.deploy(work)
        assert done.returncode == 0, done.stderr
        entry = pwd.getpwnam(user)
        result = subprocess.run([*as_user(entry.pw_uid, entry.pw_gid, [group]),
                                 "/usr/bin/python3", "-c", READ_ONLY_PROBE, str(out)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.daemon
@pytest.mark.skipif(not (container.ROOT / "usr/bin/certbot").exists()
                    or shutil.which("systemd-nspawn") is None,
                    reason=f"{container.ROOT} (with certbot and pebble) and systemd-nspawn: "
                           "scripts/bootstrap.sh")
def test_debians_certbot_service_renews_as_its_user_under_the_drop_in(run_dir: Path) -> None:
    """All in the booted Debian 12: its own certbot package and pebble; certbot.service runs
    as the certbot user under the drop-in `units` wrote (only a test drop-in adds the CA
    bundle and --force-renewal); its notify hook starts the root service, and Postfix
    serves the renewed certificate."""
    launcher = _installed_copy(run_dir / "deployer")
    pebble_dir = run_dir / "pebble"
    pebble_dir.mkdir(mode=0o755)
    pebble_config, ca = write_pebble_config(pebble_dir, 14000, 15000)
    ca.chmod(0o644)
    seed(run_dir / "seed.pem")
    conf = CONTAINER_CONF
    spool = "/var/spool/certbot-atomic-deploy"
    with container.booted([run_dir]) as ct:
        ct.run("systemctl", "stop", "certbot.timer")  # Debian's schedule: not this test's
        ct.run("systemd-run", "--unit=pebble", *(f"--setenv={k}={v}" for k, v in
                                                  PEBBLE_ENV.items()),
               "/usr/bin/pebble", "-config", str(pebble_config))
        ct.run("useradd", "--system", "--user-group", "--home-dir", "/var/lib/letsencrypt",
               "--no-create-home", "--shell", "/usr/sbin/nologin", "certbot")
        ct.run("install", "-d", "-o", "certbot", "-g", "certbot", "-m", "0755",
               "/etc/letsencrypt", "/etc/letsencrypt/renewal-hooks",
               "/etc/letsencrypt/renewal-hooks/deploy", "/var/lib/letsencrypt",
               "/var/log/letsencrypt", spool)
        ct.run("sh", "-c", "cat > /etc/letsencrypt/renewal-hooks/deploy/notify && chmod 755 "
               "/etc/letsencrypt/renewal-hooks/deploy/notify",
               input=f"#!/bin/sh\nexec {launcher} notify\n")
        _postfix_target(ct, run_dir / "seed.pem")
        wait_until(lambda: ct.run("python3", "-c", "import socket; socket.create_connection("
                                  "('127.0.0.1', 14000), 1)", check=False).returncode == 0,
                   30, "pebble listening in the container")
        ct.run("setpriv", "--reuid=certbot", "--regid=certbot", "--init-groups", "env",
               f"REQUESTS_CA_BUNDLE={ca}", "certbot", "certonly", "--standalone",
               "--http-01-port", "8080", "--server", "https://127.0.0.1:14000/dir", "-d",
               "mail.example.org", "--cert-name", "mail", "--non-interactive", "--agree-tos",
               "--register-unsafely-without-email",
               # renewal-hooks/deploy/ runs on renewals only: a new certificate says so itself
               "--deploy-hook", f"{launcher} notify", timeout=120)
        ct.run(str(launcher), "--config", conf, "--config-dir", "/etc/letsencrypt", "units",
               "--output", "/etc/systemd/system")
        ct.run("sh", "-c", "cat > /etc/systemd/system/certbot.service.d/zz-test.conf",
               input=f"[Service]\nEnvironment=REQUESTS_CA_BUNDLE={ca}\nExecStart=\n"
                     "ExecStart=/usr/bin/certbot -q renew --no-random-sleep-on-renew "
                     "--force-renewal\n")
        ct.run("systemctl", "daemon-reload")
        ct.run("systemctl", "enable", "--now", "certbot-atomic-deploy.path",
               "certbot-atomic-deploy.timer")

        def lineage() -> int:
            out = ct.run("openssl", "x509", "-noout", "-serial", "-in",
                         "/etc/letsencrypt/live/mail/cert.pem").stdout
            return int(out.split("=", 1)[1], 16)

        issued = lineage()
        wait_until(lambda: _serving(ct) == issued, 60, "postfix serving the issued certificate")
        ct.run("systemctl", "start", "certbot.service", timeout=180)  # oneshot: waits
        renewed = lineage()
        assert renewed != issued
        owner = ct.run("stat", "-c", "%U", "/etc/letsencrypt/archive/mail/privkey2.pem")
        assert owner.stdout.strip() == "certbot"  # written by certbot.service, as certbot
        wait_until(lambda: _serving(ct) == renewed, 60, "postfix serving the renewal")


def test_a_renewal_conf_the_acme_client_writes_runs_nothing_as_root(split: Split) -> None:
    """The root side never reads certbot's renewal confs: hooks that user writes there
    (renew_hook, pre_hook, post_hook) run as that user in its own renewals or not at all,
    never in the root deployer's run."""
    proof = split.root / "renewal-hook-ran"
    conf = split.certbot.config_dir / "renewal" / "mail.conf"
    original = conf.read_text()
    planted = original.replace("[renewalparams]", "[renewalparams]\n" + "".join(
        f"{hook} = touch {proof}\n" for hook in ("renew_hook", "pre_hook", "post_hook")))
    split.as_user(f"cat > {conf} <<'EOF'\n{planted}EOF\n", split.certbot.config_dir)
    work = Path(tempfile.mkdtemp(prefix="cdk-renewal-", dir=split.root))
    try:
        _conf(work, f"[mail]\nlineage = mail\npath = {work}/mail.pem\nformat = postfix\n")
        done = split.deploy(work)
        assert done.returncode == 0, done.stderr
        assert (work / "mail.pem").exists() and not proof.exists()
    finally:
        shutil.rmtree(work, ignore_errors=True)
        split.as_user(f"cat > {conf} <<'EOF'\n{original}EOF\n", split.certbot.config_dir)

"""Many hosts (issue 14): the receiver as the forced command of a key of its own, behind
real sshd instances (private ones on 127.0.0.1, each its own host key, authorized_keys,
receiver config and target tree), and the sender (``host =`` targets) pushing to them with
the real ssh client in batch mode and a pinned known_hosts. Requests go on stdin; the key
bytes are never in a command line.

Faults through the real system: an sshd stopped (a host down), a socket that accepts and
never answers, a receiver whose check fails, receivers killed mid-request by strace's
syscall injection, a truncated request, a host key that is not the pinned one. After each,
every host holds wholly the old or wholly the new version, the run says which, and what
did not reach a host stays pending until a later run brings it.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import NamedTuple

import pytest
from cryptography.hazmat.primitives import serialization

from tests.support.daemons import haproxy, lineage_serial, seed, served_serial
from tests.support.figures import report
from tests.support.pki import make_chain, pem_of
from tests.support.procs import wait_until
from tests.support.site import DEPLOY, deploy, lineage_bytes, new_version, one_line, write_conf
from tests.support.sshd import SSHD, Host, Sshd, keypair, privsep, ssh_command, sshd
from tests.support.testbed import Certbot

pytestmark = pytest.mark.skipif(not Path(SSHD).exists(),
                                reason="sshd: scripts/bootstrap.sh installs openssh-server")


# sshd gives a forced command a fresh environment: the code under test, when it is not the
# installed one (PYTHONPATH=checkout), is passed on.
RECEIVE_ENV = (f"PYTHONPATH={shlex.quote(os.environ['PYTHONPATH'])} "
               if os.environ.get("PYTHONPATH") else "")


def _bundle(version: int) -> dict[str, object]:
    key, chain = make_chain(["mail.example.org"])
    pems = [c.public_bytes(serialization.Encoding.PEM).decode() for c in chain]
    return {"protocol": 1, "action": "stage", "lineage": "mail", "version": version,
            "privkey": pem_of(key).decode(), "cert": pems[0], "chain": "".join(pems[1:])}


def _receiver(root: Path, check: str | None = None) -> Path:
    """This host's own receiver config: lineage mail to one Postfix-style file."""
    conf_dir = root / "receiver"
    (conf_dir / "out").mkdir(parents=True, mode=0o755)
    conf = conf_dir / "receive.conf"
    conf.write_text(f"[mail]\nlineage = mail\npath = {conf_dir}/out/mail.pem\n"
                    f"format = postfix\nreload = echo reloaded >> {conf_dir}/reloads.log\n"
                    + (f"check = {check}\n" if check else ""))
    return conf


def _push(host: Host, identity: Path, known: Path, request: dict[str, object],
          *asked: str) -> tuple[int, dict[str, object] | None, str]:
    done = subprocess.run(ssh_command(host, identity, known, *asked),
                          input=json.dumps(request).encode(), capture_output=True, timeout=60)
    out = done.stdout.decode().strip()
    return done.returncode, json.loads(out) if out else None, done.stderr.decode()


class OneHost(NamedTuple):
    conf: Path  # its receiver's config
    identity: Path  # the sender's key, forced to the receiver there
    host: Host
    known: Path  # the sender's known_hosts, pinning this host's key


@contextmanager
def _one_host(run_dir: Path) -> Iterator[OneHost]:
    """One private sshd whose receiver is the forced command of a sender key of its own."""
    conf = _receiver(run_dir)
    identity = run_dir / "sender_ed25519"
    public = keypair(identity)
    forced = f'restrict,command="{RECEIVE_ENV}{DEPLOY} --config {conf} receive" {public}\n'
    with sshd(run_dir / "host", forced) as host:
        known = run_dir / "known_hosts"
        known.write_text(host.known_hosts_line() + "\n")
        yield OneHost(conf, identity, host, known)


def test_the_receiver_as_a_forced_command_stages_and_commits_over_ssh(run_dir: Path) -> None:
    with _one_host(run_dir) as (conf, identity, host, known):
        bundle = _bundle(1)
        # Whatever command the sender asks for, the forced command runs.
        proof = run_dir / "asked-for-command-ran"
        code, answer, err = _push(host, identity, known, bundle, f"touch {proof}")
        assert (code, answer and answer["ok"]) == (0, True), err
        assert not proof.exists()
        assert not (conf.parent / "out" / "mail.pem").exists()  # staged only
        code, answer, err = _push(host, identity, known, {
            "protocol": 1, "action": "commit", "lineage": "mail", "version": 1})
        assert (code, answer and answer["ok"]) == (0, True), err
        published = (conf.parent / "out" / "mail.pem").read_bytes()
        assert published.startswith(str(bundle["privkey"]).encode())
        assert (conf.parent / "reloads.log").read_text() == "reloaded\n"


def test_a_host_whose_key_is_not_the_pinned_one_gets_nothing(run_dir: Path) -> None:
    with _one_host(run_dir) as (conf, identity, host, known):
        impostor = keypair(run_dir / "other_host_ed25519")
        known.write_text(f"[127.0.0.1]:{host.port} {impostor}\n")
        code, answer, err = _push(host, identity, known, _bundle(1))
        assert code == 255 and answer is None
        assert "Host key verification failed" in err
        assert not (conf.parent / "receive.store").exists()


# -- the sender: host targets in certbot's config dir, pushed to by every run


class Fleet:
    """N hosts, each a private sshd with its own receiver; the sender's config (one
    ``host =`` target per host, lineage mail) and ssh files in ``config_dir``."""

    def __init__(self, run_dir: Path, config_dir: Path, n: int, stack: ExitStack,
                 defaults: str = "") -> None:
        self.config_dir = config_dir
        ssh_dir = config_dir / "atomic-deploy.ssh"
        ssh_dir.mkdir(mode=0o700, parents=True)  # certbot makes config_dir, 0755
        self.known_hosts = ssh_dir / "known_hosts"
        self.public = keypair(ssh_dir / "id_ed25519")
        self.confs = [_receiver(run_dir / f"r{i}") for i in range(n)]
        stack.enter_context(privsep())
        self.servers = [Sshd(run_dir / f"h{i}", self.authorized(conf))
                        for i, conf in enumerate(self.confs)]
        for server in self.servers:
            server.start()
            stack.callback(server.stop)
        self.known_hosts.write_text("".join(s.host.known_hosts_line() + "\n"
                                            for s in self.servers))
        self.conf = write_conf(config_dir, f"[defaults]\nconnect_timeout = 3\n{defaults}\n" +
                               "".join(f"[h{i}]\nlineage = mail\nhost = 127.0.0.1:"
                                       f"{s.host.port}\n" for i, s in enumerate(self.servers)))

    def authorized(self, conf: Path, wrapper: str = "") -> str:
        """The authorized_keys line of the sender's key on a host: its receiver, run
        under ``wrapper`` (e.g. strace) if given."""
        command = f"{RECEIVE_ENV}{wrapper}{DEPLOY} --config {conf} receive"
        return f'restrict,command="{command}" {self.public}\n'

    def published(self, i: int) -> bytes | None:
        path = self.confs[i].parent / "out" / "mail.pem"
        return path.read_bytes() if path.exists() else None

    def reloads(self, i: int) -> int:
        log = self.confs[i].parent / "reloads.log"
        return len(log.read_text().splitlines()) if log.exists() else 0

    def status(self) -> dict[str, dict[str, object]]:
        done = deploy(self.config_dir, "status", "--json")
        return {str(r["target"]): r for r in json.loads(done.stdout)}


def _postfix_bytes(config_dir: Path) -> bytes:
    """What a receiver's postfix-format target holds for the lineage's current version."""
    live = lineage_bytes(config_dir, "mail")
    return live["privkey"] + live["fullchain"]


def _outcomes(done: subprocess.CompletedProcess[str]) -> dict[str, dict[str, object]]:
    return {str(t["target"]): t for t in json.loads(done.stdout)["targets"]}


def test_the_deploy_hook_pushes_a_certbot_lineage_to_every_host(
        certbot: Certbot, run_dir: Path) -> None:
    """A certbot issuance and a forced renewal, each with the hook: every host stages,
    then commits, publishes through its own receiver and reloads once; status shows each
    host in sync at the lineage's version."""
    with ExitStack() as stack:
        fleet = Fleet(run_dir, certbot.config_dir, 3, stack)
        certbot.certonly("mail", ["mail.example.org"], "--deploy-hook", DEPLOY)
        for version in (1, 2):
            wanted = _postfix_bytes(certbot.config_dir)
            assert [fleet.published(i) for i in range(3)] == [wanted] * 3
            assert [fleet.reloads(i) for i in range(3)] == [version] * 3
            rows = fleet.status()
            assert [(rows[f"h{i}"]["version"], rows[f"h{i}"]["in_sync"]) for i in range(3)] \
                == [(version, True)] * 3
            if version == 1:
                certbot.renew("--force-renewal")
        # Nothing new: a run pushes nothing (no ssh at all), and says so.
        done = deploy(certbot.config_dir, "deploy", "--all", "--json")
        assert done.returncode == 0, done.stderr
        assert {t["status"] for t in _outcomes(done).values()} == {"unchanged"}
        assert [fleet.reloads(i) for i in range(3)] == [2] * 3


def test_a_host_that_is_down_stays_pending_and_gets_the_version_when_back(
        certbot: Certbot, run_dir: Path) -> None:
    """One of three hosts is down for a renewal: the others commit (commit = each), certbot
    still exits 0, the hook's run reports the host, status says its push is pending and
    exits 1; the host keeps wholly the old version. Back up, the next run (reload-pending,
    the post-hook's command) brings it to the new version."""
    metrics = run_dir / "textfile" / "certbot_atomic_deploy.prom"
    metrics.parent.mkdir(mode=0o755)
    with ExitStack() as stack:
        fleet = Fleet(run_dir, certbot.config_dir, 3, stack,
                      defaults=f"metrics_file = {metrics}")
        certbot.certonly("mail", ["mail.example.org"], "--deploy-hook", DEPLOY)
        old = _postfix_bytes(certbot.config_dir)
        fleet.servers[1].stop()
        renewed = certbot.renew("--force-renewal")
        assert renewed.returncode == 0
        new = _postfix_bytes(certbot.config_dir)
        assert [fleet.published(i) for i in range(3)] == [new, old, new]
        status = deploy(certbot.config_dir, "status")
        assert status.returncode == 1
        assert "push of mail v2 pending" in status.stdout
        assert fleet.status()["h1"]["version"] == 1
        samples = metrics.read_text().splitlines()
        for i, pending in enumerate((0, 1, 0)):
            assert f'certbot_atomic_deploy_target_pending{{target="h{i}",what="push"}} ' \
                   f"{pending}" in samples
        assert 'certbot_atomic_deploy_target_version{target="h1"} 1' in samples
        fleet.servers[1].start()
        done = deploy(certbot.config_dir, "reload-pending")
        assert done.returncode == 0, done.stderr
        assert [fleet.published(i) for i in range(3)] == [new] * 3
        assert all(r["in_sync"] for r in fleet.status().values())
        assert 'certbot_atomic_deploy_target_in_sync{target="h1"} 1' in \
            metrics.read_text().splitlines()


def test_the_run_that_finds_a_host_down_says_so_in_one_line(site: Path, run_dir: Path) -> None:
    with ExitStack() as stack:
        fleet = Fleet(run_dir, site / "le", 2, stack)
        fleet.servers[0].stop()
        done = deploy(site / "le", "deploy", "--all")
        assert done.returncode == 1
        line = one_line(done)
        assert line.startswith("certbot-atomic-deploy: [h0] root@127.0.0.1:") and \
            "mail v1" in line and "not staged, unreachable:" in line and \
            "Connection refused" in line and "pending: every later run tries again" in line
        assert fleet.published(0) is None
        assert fleet.published(1) == _postfix_bytes(site / "le")


def test_commit_all_commits_on_no_host_unless_every_host_staged(
        site: Path, run_dir: Path) -> None:
    """commit = all: one host down at stage time, so the others are not committed (their
    staged version aborted, its files removed); once it is back, all commit."""
    with ExitStack() as stack:
        fleet = Fleet(run_dir, site / "le", 3, stack, defaults="commit = all")
        assert deploy(site / "le", "deploy", "--all").returncode == 0
        old = _postfix_bytes(site / "le")
        new_version(site)
        fleet.servers[2].stop()
        done = deploy(site / "le", "deploy", "--all", "--json")
        assert done.returncode == 1
        outcomes = _outcomes(done)
        assert all(outcomes[f"h{i}"]["status"] == "failed" for i in range(3))
        assert "commit = all" in str(outcomes["h0"]["detail"])
        assert [fleet.published(i) for i in range(3)] == [old] * 3
        for conf in fleet.confs[:2]:  # aborted: only what is live is left in the store
            archive = conf.parent / "receive.store" / "archive" / "mail"
            assert sorted(p.name for p in archive.iterdir()) == [
                "cert1.pem", "chain1.pem", "fullchain1.pem", "privkey1.pem"]
        fleet.servers[2].start()
        assert deploy(site / "le", "deploy", "--lineage", "mail").returncode == 0
        assert [fleet.published(i) for i in range(3)] == [_postfix_bytes(site / "le")] * 3


def test_a_host_whose_check_fails_keeps_its_old_version_and_stays_pending(
        site: Path, run_dir: Path) -> None:
    with ExitStack() as stack:
        fleet = Fleet(run_dir, site / "le", 2, stack)
        assert deploy(site / "le", "deploy", "--all").returncode == 0
        old = _postfix_bytes(site / "le")
        conf = fleet.confs[1]
        conf.write_text(conf.read_text() + "check = test -e /nonexistent-check-target\n")
        new_version(site)
        done = deploy(site / "le", "deploy", "--all")
        assert done.returncode == 1
        line = one_line(done)
        assert "[h1]" in line and "commit failed" in line and "check" in line
        assert [fleet.published(i) for i in range(2)] == [_postfix_bytes(site / "le"), old]
        assert fleet.reloads(1) == 1  # the rolled-back host was not reloaded again
        assert fleet.status()["h1"]["pending"] == "push"
        conf.write_text(conf.read_text().replace("check = test -e /nonexistent-check-target\n",
                                                 ""))
        assert deploy(site / "le", "deploy", "--all").returncode == 0
        assert fleet.published(1) == _postfix_bytes(site / "le")


def test_a_host_that_accepts_and_never_answers_times_out_and_stays_pending(
        site: Path, run_dir: Path) -> None:
    """A socket that accepts TCP and never says a word (no SSH banner): ssh's connect
    timeout (3 s here) ends it; the other host commits."""
    with ExitStack() as stack, socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        fleet = Fleet(run_dir, site / "le", 1, stack)
        port = silent.getsockname()[1]
        fleet.known_hosts.write_text(fleet.known_hosts.read_text() +
                                     f"[127.0.0.1]:{port} {fleet.servers[0].host.host_key}\n")
        fleet.conf.write_text(fleet.conf.read_text() +
                              f"[silent]\nlineage = mail\nhost = 127.0.0.1:{port}\n")
        done = deploy(site / "le", "deploy", "--all")
        assert done.returncode == 1
        assert "[silent]" in one_line(done) and "timed out" in one_line(done)
        assert fleet.published(0) == _postfix_bytes(site / "le")
        assert fleet.status()["silent"]["pending"] == "push"


def test_a_host_whose_key_is_not_pinned_is_sent_nothing_by_the_sender(
        site: Path, run_dir: Path) -> None:
    with ExitStack() as stack:
        fleet = Fleet(run_dir, site / "le", 2, stack)
        impostor = keypair(run_dir / "impostor_ed25519")
        port = fleet.servers[0].host.port
        fleet.known_hosts.write_text(f"[127.0.0.1]:{port} {impostor}\n" +
                                     fleet.servers[1].host.known_hosts_line() + "\n")
        done = deploy(site / "le", "deploy", "--all")
        assert done.returncode == 1
        assert "[h0]" in one_line(done) and "Host key verification failed" in one_line(done)
        assert not (fleet.confs[0].parent / "receive.store").exists()
        assert fleet.published(1) is not None


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace: scripts/bootstrap.sh")
@pytest.mark.parametrize("syscall, when, phase", [("fsync", 2, "stage"),
                                                   ("symlinkat", 3, "commit")])
def test_a_receiver_killed_mid_request_leaves_the_host_wholly_old(
        site: Path, run_dir: Path, syscall: str, when: int, phase: str) -> None:
    """strace kills the receiver (SIGKILL) in stage, at its second fsync (one archive file
    written), or in commit, at its third symlink (two of the store's four live links
    switched, the publish not begun). The host serves wholly the old version, the run
    reports it, and the next run with a healthy receiver brings the new one."""
    strace = shutil.which("strace")
    with ExitStack() as stack:
        fleet = Fleet(run_dir, site / "le", 2, stack)
        assert deploy(site / "le", "deploy", "--all").returncode == 0
        old = _postfix_bytes(site / "le")
        new_version(site)
        killer = (f"{strace} -f -o /dev/null -e trace={syscall} "
                  f"-e inject={syscall}:signal=SIGKILL:when={when} ")
        keys = fleet.servers[0].keys
        keys.write_text(fleet.authorized(fleet.confs[0], killer))
        done = deploy(site / "le", "deploy", "--all")
        assert done.returncode == 1
        assert "[h0]" in one_line(done) and (
            "not staged" if phase == "stage" else "commit failed") in one_line(done)
        assert "ended with no answer (its receiver was killed by a signal?)" in one_line(done)
        assert fleet.published(0) == old
        assert not list((fleet.confs[0].parent / "out").glob("*.tmp"))
        keys.write_text(fleet.authorized(fleet.confs[0]))
        again = deploy(site / "le", "deploy", "--all")
        assert again.returncode == 0, again.stderr
        assert [fleet.published(i) for i in range(2)] == [_postfix_bytes(site / "le")] * 2


def test_a_truncated_request_is_refused_with_nothing_written(run_dir: Path) -> None:
    with _one_host(run_dir) as (conf, identity, host, known):
        whole = json.dumps(_bundle(1)).encode()
        done = subprocess.run(ssh_command(host, identity, known), input=whole[:len(whole) // 2],
                              capture_output=True, timeout=60)
        assert done.returncode == 2
        answer = json.loads(done.stdout)
        assert answer["ok"] is False and "truncated" in answer["error"]
        assert not (conf.parent / "receive.store").exists()


def test_no_key_byte_is_in_any_process_argv_or_environment_during_a_push(
        site: Path, run_dir: Path) -> None:
    """While pushes to three hosts run (sender, ssh, sshd, receivers), a thread reads every
    /proc/PID/cmdline and environ over and over: none holds a line of the private key."""
    with ExitStack() as stack:
        fleet = Fleet(run_dir, site / "le", 3, stack)
        key_lines: list[bytes] = []  # of every version pushed (the watcher reads it live)
        stop = threading.Event()
        seen = {"reads": 0, "pids": 0, "hits": 0}

        def watch() -> None:
            pids: set[str] = set()
            while not stop.is_set():
                for pid in os.listdir("/proc"):
                    if not pid.isdigit():
                        continue
                    pids.add(pid)
                    for name in ("cmdline", "environ"):
                        try:
                            data = Path(f"/proc/{pid}/{name}").read_bytes()
                        except OSError:
                            continue
                        seen["reads"] += 1
                        if any(line in data for line in key_lines):
                            seen["hits"] += 1
            seen["pids"] = len(pids)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            for version in (2, 3, 4):
                new_version(site, version)
                key_lines.extend(
                    line for line in lineage_bytes(site / "le", "mail")["privkey"].split(b"\n")
                    if len(line) >= 16 and not line.startswith(b"-----"))
                assert deploy(site / "le", "deploy", "--all").returncode == 0
        finally:
            stop.set()
            watcher.join()
        report(f"fleet: /proc watch during 3 pushes to 3 hosts: {seen['reads']} reads of "
               f"cmdline/environ over {seen['pids']} processes, {seen['hits']} with key bytes")
        assert seen["hits"] == 0 and seen["pids"] > 20
        assert [fleet.published(i) for i in range(3)] == [_postfix_bytes(site / "le")] * 3


@pytest.mark.daemon
@pytest.mark.skipif(shutil.which("haproxy", path="/usr/sbin:/usr/bin") is None,
                    reason="haproxy: scripts/bootstrap.sh")
def test_the_probe_proves_what_a_hosts_haproxy_serves_and_repushes_a_restored_host(
        site: Path, run_dir: Path) -> None:
    """A real HAProxy behind one host, and the sender's probe of it: after the commit it
    must serve the committed certificate. A receiver that publishes without reloading
    leaves HAProxy on the old one: the run fails on the probe, status says so, and once
    HAProxy is reloaded the next run's probe finds it in sync."""
    crt = run_dir / "lb" / "mail.pem"
    crt.parent.mkdir(mode=0o755)
    seed(crt, order="key-last")
    with ExitStack() as stack:
        lb = stack.enter_context(haproxy(run_dir / "haproxy", str(crt)))
        fleet = Fleet(run_dir, site / "le", 2, stack)
        receiver = fleet.confs[0]
        lb_target = (f"[lb]\nlineage = mail\npath = {crt}\nformat = haproxy\n"
                     f"check = {lb.check}\nreload = {lb.reload}\n")
        receiver.write_text(receiver.read_text() + lb_target)
        fleet.conf.write_text(fleet.conf.read_text().replace(
            "[h0]\n", f"[h0]\nprobe = 127.0.0.1:{lb.port}/tls\n"))
        assert deploy(site / "le", "deploy", "--all").returncode == 0
        assert served_serial(lb.port) == lineage_serial(site / "le" / "live" / "mail")
        row = fleet.status()["h0"]
        assert (row["in_sync"], row["probe_ok"]) == (True, True)

        receiver.write_text(receiver.read_text().replace(f"reload = {lb.reload}\n", ""))
        new_version(site)
        done = deploy(site / "le", "deploy", "--all")
        assert done.returncode == 1
        serial = f"{lineage_serial(site / 'le' / 'live' / 'mail'):x}"
        assert f"but the probe: 127.0.0.1:{lb.port}/tls serves another certificate" in \
            one_line(done) and f"not serial {serial}" in one_line(done)
        row = fleet.status()["h0"]
        assert (row["in_sync"], row["probe_ok"], row["version"]) == (False, False, 2)
        assert "the last probe" in str(row["detail"])

        subprocess.run(["sh", "-c", lb.reload], check=True, timeout=30)
        again = deploy(site / "le", "deploy", "--all")
        assert again.returncode == 0, again.stderr
        row = fleet.status()["h0"]
        assert (row["in_sync"], row["probe_ok"]) == (True, True)

        # The host restored from a backup of v1 (its receiver's files and HAProxy's): the
        # sender's record says v2, but the next run for every lineage asks what it serves
        # and pushes v2 again, in that same run.
        v2 = lineage_serial(site / "le" / "live" / "mail")
        receiver.write_text(receiver.read_text() + f"reload = {lb.reload}\n")
        backup = run_dir / "backup"
        shutil.copytree(receiver.parent, backup / "receiver", symlinks=True)
        shutil.copy2(crt, backup / "mail.pem")
        new_version(site, 3)
        assert deploy(site / "le", "deploy", "--all").returncode == 0
        shutil.rmtree(receiver.parent)
        shutil.copytree(backup / "receiver", receiver.parent, symlinks=True)
        shutil.copy2(backup / "mail.pem", crt)
        subprocess.run(["sh", "-c", lb.reload], check=True, timeout=30)
        _eventually_serving(lb.port, v2)
        restored = deploy(site / "le", "deploy", "--all", "--json")
        assert restored.returncode == 0, restored.stderr
        assert _outcomes(restored)["h0"]["status"] == "published"
        assert _outcomes(restored)["h1"]["status"] == "unchanged"
        _eventually_serving(lb.port, lineage_serial(site / "le" / "live" / "mail"))
        row = fleet.status()["h0"]
        assert (row["in_sync"], row["probe_ok"], row["version"]) == (True, True, 3)


def _eventually_serving(port: int, serial: int) -> None:
    wait_until(lambda: served_serial(port) == serial, 10, "haproxy serving the new serial",
               interval=0.2)


EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "ansible"


@pytest.mark.skipif(shutil.which("ansible-playbook") is None,
                    reason="ansible-playbook: scripts/bootstrap.sh installs Debian's ansible-core")
def test_the_ansible_example_pushes_through_the_same_receiver(site: Path, run_dir: Path) -> None:
    """examples/ansible/push-lineage.yml, run by Debian's ansible-core against two private
    sshd hosts (an admin's key, as Ansible logs in): every host stages, then commits, and
    publishes by its own receive.conf; the key is in no line Ansible prints."""
    admin = run_dir / "admin_ed25519"
    public = keypair(admin)
    with ExitStack() as stack:
        stack.enter_context(privsep())
        confs = [_receiver(run_dir / f"r{i}") for i in range(2)]
        servers = [Sshd(run_dir / f"h{i}", f"{public}\n", permit_root="prohibit-password")
                   for i in range(2)]
        for server in servers:
            server.start()
            stack.callback(server.stop)
        known = run_dir / "known_hosts"
        known.write_text("".join(s.host.known_hosts_line() + "\n" for s in servers))
        inventory = run_dir / "inventory"
        inventory.write_text("[certificate_hosts]\n" + "".join(
            f"h{i} ansible_host=127.0.0.1 ansible_port={s.host.port} ansible_user=root "
            f"receiver_conf={confs[i]}\n" for i, s in enumerate(servers)) +
            "[certificate_hosts:vars]\nansible_python_interpreter=/usr/bin/python3\n"
            f"ansible_ssh_private_key_file={admin}\n"
            f"ansible_ssh_common_args='-o UserKnownHostsFile={known} -o "
            "GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes'\n")
        env = dict(os.environ, ANSIBLE_PIPELINING="1", ANSIBLE_HOST_KEY_CHECKING="True",
                   ANSIBLE_LOCAL_TEMP=str(run_dir / "ansible-local"),
                   ANSIBLE_REMOTE_TEMP=str(run_dir / "ansible-remote"),
                   ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
        extra = {"lineage": "mail", "config_dir": str(site / "le"), "receiver": DEPLOY,
                 "receiver_environment": {"PYTHONPATH": os.environ["PYTHONPATH"]}
                 if os.environ.get("PYTHONPATH") else {}}
        done = subprocess.run(["ansible-playbook", "-i", str(inventory), "-e",
                               json.dumps(extra), str(EXAMPLES / "push-lineage.yml")],
                              capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        wanted = _postfix_bytes(site / "le")
        assert [(c.parent / "out" / "mail.pem").read_bytes() for c in confs] == [wanted] * 2
        assert all((c.parent / "reloads.log").read_text() == "reloaded\n" for c in confs)
        assert done.stdout.count('"msg": "mail published"') == 2
        key = lineage_bytes(site / "le", "mail")["privkey"].split(b"\n")[1].decode()
        assert key not in done.stdout + done.stderr

        # A host that refuses to stage: no host commits (any_errors_fatal), and the
        # receiver's reason is printed, not the key.
        new_version(site)
        confs[1].write_text(confs[1].read_text().replace("lineage = mail", "lineage = web"))
        done = subprocess.run(["ansible-playbook", "-i", str(inventory), "-e",
                               json.dumps(extra), str(EXAMPLES / "push-lineage.yml")],
                              capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode != 0
        assert "no target in" in done.stdout and "takes lineage mail; refused" in done.stdout
        assert [(c.parent / "out" / "mail.pem").read_bytes() for c in confs] == [wanted] * 2
        key = lineage_bytes(site / "le", "mail")["privkey"].split(b"\n")[1].decode()
        assert key not in done.stdout + done.stderr


def test_a_host_slower_than_its_timeout_is_cut_off_and_pushed_again(
        site: Path, run_dir: Path) -> None:
    """timeout = 3 on a host whose commit takes longer (its check sleeps 6 s): the sender
    kills its ssh at 3 s and reports it; the push stays pending, and the next run, the
    check quick again, finds the host holding it or brings it."""
    with ExitStack() as stack:
        fleet = Fleet(run_dir, site / "le", 2, stack)
        fleet.conf.write_text(fleet.conf.read_text().replace("[h0]\n", "[h0]\ntimeout = 3\n"))
        slow = fleet.confs[0]
        slow.write_text(slow.read_text() + "check = sleep 6\n")
        done = deploy(site / "le", "deploy", "--all")
        assert done.returncode == 1
        assert "[h0]" in one_line(done) and "no answer within 3 s" in one_line(done)
        assert fleet.status()["h0"]["pending"] == "push"
        assert fleet.published(1) == _postfix_bytes(site / "le")
        slow.write_text(slow.read_text().replace("check = sleep 6\n", ""))
        again = deploy(site / "le", "deploy", "--all")
        assert again.returncode == 0, again.stderr
        assert fleet.published(0) == _postfix_bytes(site / "le")
        assert fleet.status()["h0"]["in_sync"] is True

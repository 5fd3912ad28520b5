"""Many hosts (issue 14), first part: the receiver as the forced command of a key of its
own, behind a real sshd (a private one on 127.0.0.1, its own host key), driven by the real
ssh client in batch mode with a pinned known_hosts. The request goes on stdin; the key
bytes never in a command line.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.support.pki import make_chain, pem_of
from tests.support.site import DEPLOY
from tests.support.sshd import SSHD, Host, keypair, ssh_command, sshd

pytestmark = pytest.mark.skipif(not Path(SSHD).exists(),
                                reason="sshd: scripts/bootstrap.sh installs openssh-server")


def _bundle(version: int) -> dict[str, object]:
    key, chain = make_chain(["mail.example.org"])
    pems = [c.public_bytes(serialization.Encoding.PEM).decode() for c in chain]
    return {"protocol": 1, "action": "stage", "lineage": "mail", "version": version,
            "privkey": pem_of(key).decode(), "cert": pems[0], "chain": "".join(pems[1:])}


def _receiver(root: Path) -> Path:
    """This host's own receiver config: lineage mail to one Postfix-style file."""
    conf_dir = root / "receiver"
    (conf_dir / "out").mkdir(parents=True, mode=0o755)
    conf = conf_dir / "receive.conf"
    conf.write_text(f"[mail]\nlineage = mail\npath = {conf_dir}/out/mail.pem\n"
                    f"format = postfix\nreload = echo reloaded >> {conf_dir}/reloads.log\n")
    return conf


def _push(host: Host, identity: Path, known: Path, request: dict[str, object],
          *asked: str) -> tuple[int, dict[str, object] | None, str]:
    done = subprocess.run(ssh_command(host, identity, known, *asked),
                          input=json.dumps(request).encode(), capture_output=True, timeout=60)
    out = done.stdout.decode().strip()
    return done.returncode, json.loads(out) if out else None, done.stderr.decode()


def test_the_receiver_as_a_forced_command_stages_and_commits_over_ssh(run_dir: Path) -> None:
    conf = _receiver(run_dir)
    identity = run_dir / "sender_ed25519"
    public = keypair(identity)
    forced = f'restrict,command="{DEPLOY} --config {conf} receive" {public}\n'
    with sshd(run_dir / "host", forced) as host:
        known = run_dir / "known_hosts"
        known.write_text(host.known_hosts_line() + "\n")
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
    conf = _receiver(run_dir)
    identity = run_dir / "sender_ed25519"
    public = keypair(identity)
    with sshd(run_dir / "host", f'restrict,command="{DEPLOY} --config {conf} receive" '
                                f'{public}\n') as host:
        impostor = keypair(run_dir / "other_host_ed25519")
        known = run_dir / "known_hosts"
        known.write_text(f"[127.0.0.1]:{host.port} {impostor}\n")
        code, answer, err = _push(host, identity, known, _bundle(1))
        assert code == 255 and answer is None
        assert "Host key verification failed" in err
        assert not (conf.parent / "receive.store").exists()

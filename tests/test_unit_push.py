"""The sender's config (``host =`` targets) and what it says before any ssh runs.

Unit tier: as the user running the tests, in their own temp dir, no network. Pushing
over real ssh to real sshd instances is tests/test_fleet.py (root tier).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from certbot_atomic_deploy import cli
from certbot_atomic_deploy.config import load
from certbot_atomic_deploy.pem import read_lineage
from certbot_atomic_deploy.probe import Probe, parse_probe
from certbot_atomic_deploy.push import ssh_argv, stage_request
from daemon_keys.errors import ConfigError
from tests.support.pki import make_chain
from tests.support.site import make_site, run_main, snapshot

HOSTS = """\
[mx1]
lineage = mail
host = 127.0.0.1:2222

[mx2]
lineage = mail
host = deploy@[2001:db8::2]
"""


@pytest.fixture
def sender(tmp_path: Path) -> Path:
    """SITE/le with lineage 'mail', the sender's ssh files beside its config."""
    site = make_site(tmp_path)
    ssh = site / "le" / "atomic-deploy.ssh"
    ssh.mkdir(mode=0o700)
    (ssh / "id_ed25519").write_text("not read by the tests: ssh would read it\n")
    (ssh / "id_ed25519").chmod(0o600)
    (ssh / "known_hosts").write_text("[127.0.0.1]:2222 ssh-ed25519 AAAA\n")
    (ssh / "known_hosts").chmod(0o644)
    return site / "le"


def _conf(config_dir: Path, body: str) -> Path:
    path = config_dir / "atomic-deploy.conf"
    path.write_text(body)
    return path


def test_a_host_target_reads_user_host_port_and_the_ssh_files_beside_the_config(
        sender: Path) -> None:
    config = load(str(_conf(sender, "[defaults]\nparallel = 4\ncommit = all\n" + HOSTS)),
                  str(sender))
    assert config.targets == ()
    mx1, mx2 = config.hosts
    assert (mx1.user, mx1.host, mx1.port, mx1.destination) == (
        "root", "127.0.0.1", 2222, "root@127.0.0.1:2222")
    assert (mx2.user, mx2.host, mx2.port, mx2.destination) == (
        "deploy", "2001:db8::2", 22, "deploy@[2001:db8::2]:22")
    assert mx1.identity == str(sender / "atomic-deploy.ssh" / "id_ed25519")
    assert mx1.known_hosts == str(sender / "atomic-deploy.ssh" / "known_hosts")
    assert (config.parallel, config.commit) == (4, "all")


@pytest.mark.parametrize("body, expected", [
    ("[h]\nlineage = mail\nhost = 127.0.0.1\npath = /etc/x.pem\n",
     "[h] path: a host target's path is its receiver's to decide"),
    ("[h]\nlineage = mail\nhost = 127.0.0.1\nreload = systemctl reload postfix\n",
     "[h] reload: a host target's reload is its receiver's to decide"),
    ("[h]\nlineage = mail\nhost = 127.0.0.1\nowner = root\n",
     "[h] owner: a host target's owner is its receiver's to decide"),
    ("[h]\nlineage = mail\nhost = -oProxyCommand=x\n", "is not [USER@]HOST[:PORT]"),
    ("[h]\nlineage = mail\nhost = a b\n", "is not [USER@]HOST[:PORT]"),
    ("[h]\nlineage = mail\nhost = 127.0.0.1:70000\n", "is not [USER@]HOST[:PORT]"),
    ("[h]\nhost = 127.0.0.1\n", "[h]: say which lineage it takes"),
    ("[h/x]\nlineage = mail\nhost = 127.0.0.1\n", "[h/x]: a target name may hold letters"),
    ("[defaults]\nhost = 127.0.0.1\n[h]\nlineage = mail\npath = /x/y.pem\nformat = key\n",
     "[defaults] host: belongs in a target section"),
    ("[h]\nlineage = mail\nhost = 127.0.0.1\nparallel = 3\n",
     "[h] parallel: one for the whole run; put it in [defaults]"),
    ("[defaults]\ncommit = some\n[h]\nlineage = mail\nhost = 127.0.0.1\n",
     "[defaults] commit: 'some' is not one of each, all"),
    ("[defaults]\nparallel = 0\n[h]\nlineage = mail\nhost = 127.0.0.1\n",
     "[defaults] parallel: '0' is not a number from 1 to 256"),
    ("[f]\nlineage = mail\npath = /x/y.pem\nformat = key\nidentity = /k\n",
     "[f] identity: only a host target"),
    ("[a]\nlineage = mail\nhost = 127.0.0.1\n[b]\nlineage = mail\nhost = root@127.0.0.1:22\n",
     "[b] and [a] both push the same lineage to root@127.0.0.1:22"),
])
def test_a_bad_host_target_is_one_config_error_naming_it(sender: Path, body: str,
                                                         expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(str(_conf(sender, body)), str(sender))
    assert expected in str(caught.value)


def test_the_senders_identity_and_known_hosts_are_checked_like_secrets(sender: Path) -> None:
    path = str(_conf(sender, HOSTS))
    identity = sender / "atomic-deploy.ssh" / "id_ed25519"
    identity.chmod(0o640)
    with pytest.raises(ConfigError, match=r"the sender's key must be uid \d+'s and 0600"):
        load(path, str(sender))
    identity.chmod(0o600)
    known = sender / "atomic-deploy.ssh" / "known_hosts"
    known.chmod(0o666)
    with pytest.raises(ConfigError, match="it decides which hosts are sent keys"):
        load(path, str(sender))
    known.unlink()
    with pytest.raises(ConfigError, match=r"known_hosts .*: missing; pin each host's key"):
        load(path, str(sender))
    identity.unlink()
    with pytest.raises(ConfigError, match=r"missing.*ssh-keygen -t ed25519"):
        load(path, str(sender))


def test_the_ssh_command_pins_the_host_key_and_holds_no_secret(sender: Path) -> None:
    config = load(str(_conf(sender, HOSTS)), str(sender))
    argv = ssh_argv(config.hosts[1])
    options = {argv[i + 1] for i, word in enumerate(argv) if word == "-o"}
    for wanted in ("BatchMode=yes", "StrictHostKeyChecking=yes", "IdentitiesOnly=yes",
                   "UpdateHostKeys=no", "ControlMaster=no", "ForwardAgent=no",
                   "GlobalKnownHostsFile=/dev/null", "User=deploy", "Port=22",
                   f"UserKnownHostsFile={config.hosts[1].known_hosts}"):
        assert wanted in options
    assert argv[-2:] == ["--", "2001:db8::2"]  # a host is never read as an option
    request = stage_request(read_lineage(str(sender), "mail"))
    key_body = json.loads(request)["privkey"].splitlines()[1]
    assert key_body not in " ".join(argv)


def test_check_config_dry_run_and_status_of_hosts_run_no_ssh(
        sender: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _conf(sender, HOSTS)
    before = snapshot(sender)
    code, out, _ = run_main(capsys, cli.main, "--config-dir", str(sender), "check-config")
    assert code == 0
    assert "[mx1] lineage mail -> host root@127.0.0.1:2222 (over ssh" in out
    assert "push: 8 host(s) at once; commit = each" in out
    code, out, _ = run_main(capsys, cli.main, "--config-dir", str(sender), "deploy", "--all",
                        "--dry-run")
    assert code == 0
    assert "[mx2] planned: would push deploy@[2001:db8::2]:22: mail v1 (serial" in out
    code, out, _ = run_main(capsys, cli.main, "--config-dir", str(sender), "status", "--json")
    assert code == 1
    rows = json.loads(out)
    assert [(r["target"], r["in_sync"], r["detail"]) for r in rows] == [
        ("mx1", False, "never pushed"), ("mx2", False, "never pushed")]
    assert snapshot(sender) == before  # nothing written: no state, no lock


def test_rollback_of_a_host_target_says_where_to_roll_back(
        sender: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _conf(sender, HOSTS)
    code, _, err = run_main(capsys, cli.main, "--config-dir", str(sender), "rollback", "mx1")
    assert code == 2
    assert err == [f"certbot-atomic-deploy: {os.path.realpath(sender)}/atomic-deploy.conf: "
                   "[mx1] is a host target: roll back on 127.0.0.1, where its receiver "
                   "published it (certbot-atomic-deploy --config RECEIVER.conf rollback "
                   "TARGET)"]


@pytest.mark.parametrize("text, expected", [
    ("mx1.example.org:25/smtp", Probe("mx1.example.org", 25, "smtp")),
    ("127.0.0.1:443", Probe("127.0.0.1", 443, "tls")),
    ("[2001:db8::1]:993/tls", Probe("2001:db8::1", 993, "tls")),
    ("imap.example.org:143/imap", Probe("imap.example.org", 143, "imap")),
])
def test_a_probe_is_host_port_and_protocol(text: str, expected: Probe) -> None:
    assert parse_probe(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("mx1.example.org", "'mx1.example.org' is not HOST:PORT[/PROTO]"),
    ("mx1:0", "'mx1:0' is not HOST:PORT[/PROTO]"),
    ("mx1:25/gopher", "'gopher' is not one of tls, smtp, imap, pop3"),
    ("-x:25", "'-x:25' is not HOST:PORT[/PROTO]"),
])
def test_a_bad_probe_says_what_it_should_be(sender: Path, text: str, expected: str) -> None:
    path = _conf(sender, f"[f]\nlineage = mail\npath = /x/y.pem\nformat = key\nprobe = {text}\n")
    with pytest.raises(ConfigError) as caught:
        load(str(path), str(sender))
    assert f"[f] probe: {expected}" in str(caught.value)


def test_a_probe_is_per_target_never_in_defaults(sender: Path) -> None:
    path = _conf(sender, "[defaults]\nprobe = a:1\n" + HOSTS)
    with pytest.raises(ConfigError, match=r"\[defaults\] probe: belongs in a target section"):
        load(str(path), str(sender))


def test_the_serial_a_probe_reports_is_read_from_the_served_certificate() -> None:
    """What the probe says was served: the serial from the DER bytes, as cryptography
    reads it, for serials of every length (a leading zero byte included)."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from certbot_atomic_deploy.probe import _serial_of

    for _ in range(20):
        _, chain = make_chain(["mail.example.org"])
        for cert in chain:
            assert _serial_of(cert.public_bytes(Encoding.DER)) == f"{cert.serial_number:x}"
    assert _serial_of(b"\x30\x03\x02\x01") == "unknown"

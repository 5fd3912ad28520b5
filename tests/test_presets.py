"""Daemon presets in the config: resolved values, overrides, and modes a daemon refuses."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.site import deploy, mode_of, one_line, snapshot, write_conf


def test_check_config_shows_a_presets_resolved_values(site: Path) -> None:
    write_conf(site / "le", f"[mail]\npreset = postfix\nlineage = mail\n"
                            f"path = {site}/out/mail.pem\n")
    shown = deploy(site / "le", "check-config")
    assert shown.returncode == 0, shown.stderr
    assert "[mail] (preset postfix) lineage mail -> file" in shown.stdout
    assert "(key+fullchain); key files root:root 0600" in shown.stdout
    assert "check: postfix check" in shown.stdout and "reload: postfix reload" in shown.stdout


def test_target_values_override_the_preset_and_the_preset_overrides_defaults(
        site: Path) -> None:
    log = site / "reload.log"
    write_conf(site / "le", f"""\
[defaults]
reload = echo defaults >> {log}

[mail]
preset = haproxy
lineage = mail
path = {site}/out/mail.pem
check = true
reload = echo mine >> {log}

[other]
preset = apache
lineage = mail
path = {site}/out/apache.pem
check = false
""")
    # [other]'s reload is apache's (apachectl graceful), not [defaults]' echo; its own
    # check fails, so that reload (which would reach this machine's Apache) never runs.
    shown = deploy(site / "le", "check-config")
    assert "reload: apachectl graceful" in shown.stdout.split("[other]")[1], shown.stdout
    result = deploy(site / "le", "deploy", "--all")
    assert result.returncode == 1
    assert log.read_text() == "mine\n"
    data = (site / "out" / "mail.pem").read_bytes()
    assert data.index(b"CERTIFICATE") < data.index(b"PRIVATE KEY")  # haproxy: chain, then key
    assert not (site / "out" / "apache.pem").exists()
    assert "check 'false' failed" in result.stderr


def test_an_empty_value_turns_off_a_presets_commands(site: Path) -> None:
    # apache's preset checks and reloads with apachectl: "reload =" and "check =" in the
    # target must leave it with none (nothing reaches this machine's Apache).
    write_conf(site / "le", f"[t]\npreset = apache\nlineage = mail\n"
                            f"path = {site}/out/apache.pem\nreload =\ncheck =\n")
    shown = deploy(site / "le", "check-config")
    assert "reload:" not in shown.stdout and "check:" not in shown.stdout, shown.stdout
    result = deploy(site / "le", "deploy", "--all")
    assert result.returncode == 0, result.stderr
    assert mode_of(site / "out" / "apache.pem") == 0o600


@pytest.mark.parametrize("preset,extra,message", [
    ("sendmail", "mode = 0640", "[t] mode: 0640: sendmail refuses a key file this open"),
    ("samba", "mode = 0400", "[t] mode: 0400: samba refuses any key mode but 0600"),
    ("samba", "owner = 65534", "[t] owner: samba refuses a key file not owned by root"),
    ("opensmtpd", "owner = 65534", "opensmtpd refuses a key file not owned by root"),
    ("exim", "", "[t] group (from preset exim): group 'Debian-exim' does not exist"),
    ("sendmail", "mode = 0640\ndont_blame_sendmail = GroupReadableKeyFiles",
     "[t] dont_blame_sendmail: 'GroupReadableKeyFiles' is not one of GroupReadableKeyFile"),
    ("postfix", "dont_blame_sendmail = GroupReadableKeyFile",
     "[t] dont_blame_sendmail: only a preset = sendmail target takes it"),
    ("nosuch", "", "[t] preset:"),
])
def test_a_mode_or_owner_the_daemon_refuses_is_a_config_error(
        site: Path, preset: str, extra: str, message: str) -> None:
    write_conf(site / "le", f"[t]\npreset = {preset}\nlineage = mail\n"
                            f"path = {site}/out/key.pem\n{extra}\n")
    before = snapshot(site / "out")
    result = deploy(site / "le", "deploy", "--all")
    assert result.returncode == 2
    assert message in one_line(result)
    assert snapshot(site / "out") == before



def test_sendmail_takes_a_group_readable_key_when_told_it_may(site: Path, group: str,
                                                              run_dir: Path) -> None:
    body = (f"[t]\npreset = sendmail\nlineage = mail\npath = {run_dir}/key.pem\n"
            f"group = {group}\nmode = 0640\ncheck =\nreload =\n")
    write_conf(site / "le", body)
    refused = deploy(site / "le", "deploy", "--all")
    assert refused.returncode == 2 and "sendmail refuses a key file this open" in refused.stderr
    write_conf(site / "le", body + "dont_blame_sendmail = GroupReadableKeyFile\n")
    result = deploy(site / "le", "deploy", "--all")
    assert result.returncode == 0, result.stderr
    assert mode_of(run_dir / "key.pem") == 0o640


def test_sendmail_refuses_a_key_below_a_world_writable_directory_even_sticky(
        site: Path) -> None:
    sticky = site / "out" / "spool"
    sticky.mkdir()
    sticky.chmod(0o1777)
    (sticky / "tls").mkdir(mode=0o755)
    write_conf(site / "le", f"[t]\npreset = sendmail\nlineage = mail\n"
                            f"path = {sticky}/tls/key.pem\n")
    result = deploy(site / "le", "check-config")
    assert result.returncode == 2
    assert f"{sticky} is world-writable (mode 1777), and sendmail refuses" in one_line(result)


def test_the_daemons_user_must_open_the_key_before_any_reload(site: Path, user: str,
                                                              group: str) -> None:
    """A check that passes while the daemon cannot read its key (exim -bV, slaptest -u)
    is not enough: the target's reader opens the published key first."""
    log = site / "reload.log"
    body = (f"[t]\nlineage = mail\npath = {site}/out/key.pem\nformat = key\n"
            f"reader = {user}\nreload = echo reload >> {log}\n")
    write_conf(site / "le", body + f"group = {group}\n")  # the user is not in it
    result = deploy(site / "le", "deploy", "--all")
    assert result.returncode == 1
    line = one_line(result)
    assert f"check 'open {site}/out/key.pem as {user}' failed ({user} cannot open it: " \
           "Permission denied)" in line and "removed (there was none before)" in line
    assert not (site / "out" / "key.pem").exists() and not log.exists()
    subprocess.run(["usermod", "-a", "-G", group, user], check=True)
    result = deploy(site / "le", "deploy", "--all")
    assert result.returncode == 0, result.stderr
    assert log.read_text() == "reload\n"
    assert f"check ok: open {site}/out/key.pem as {user}" in result.stdout

"""Daemon presets in the config: resolved values, overrides, and modes a daemon refuses."""
from __future__ import annotations

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
preset = courier
lineage = mail
path = {site}/out/courier.pem
""")
    result = deploy(site / "le", "deploy", "--all")
    assert result.returncode == 1  # courier's own reload (systemctl ...) fails here
    assert log.read_text() == "mine\n"
    data = (site / "out" / "mail.pem").read_bytes()
    assert data.index(b"CERTIFICATE") < data.index(b"PRIVATE KEY")  # haproxy: chain, then key
    assert mode_of(site / "out" / "courier.pem") == 0o600
    assert "systemctl restart courier-imap-ssl" in result.stderr


def test_an_empty_value_turns_off_a_presets_commands(site: Path) -> None:
    # courier's preset reloads with systemctl, which fails here: "reload =" and
    # "check =" in the target must leave it with none, and the deploy succeeds.
    write_conf(site / "le", f"[t]\npreset = courier\nlineage = mail\n"
                            f"path = {site}/out/courier.pem\nreload =\ncheck =\n")
    shown = deploy(site / "le", "check-config")
    assert "reload:" not in shown.stdout and "check:" not in shown.stdout, shown.stdout
    result = deploy(site / "le", "deploy", "--all")
    assert result.returncode == 0, result.stderr
    assert (site / "out" / "courier.pem").exists()


@pytest.mark.parametrize("preset,extra,message", [
    ("sendmail", "mode = 0640", "[t] mode: 0640: sendmail refuses a key file this open"),
    ("samba", "mode = 0400", "[t] mode: 0400: samba refuses any key mode but 0600"),
    ("samba", "owner = 65534", "[t] owner: samba refuses a key file not owned by root"),
    ("opensmtpd", "owner = 65534", "opensmtpd refuses a key file not owned by root"),
    ("exim", "", "[t] group (from preset exim): group 'Debian-exim' does not exist"),
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


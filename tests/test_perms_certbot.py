"""certbot_perms end to end: the real certbot CLI, a real pebble, real users and groups."""
from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.pki import key_matches_cert
from tests.support.site import mode_of, snapshot
from tests.support.testbed import Certbot
from tests.support.users import NOBODY, as_user, run_as

PERMS = str(Path(sys.executable).parent / "certbot-perms")
RENEWALS = 3


def perms(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PERMS, *args], capture_output=True, text=True, timeout=60,
                          env=env)


def assert_keys(certbot: Certbot, name: str, uid: int, gid: int, mode: int,
                versions: int) -> None:
    keys = sorted(certbot.archive(name).glob("privkey*.pem"))
    assert len(keys) == versions
    for key in keys:
        st = key.lstat()
        assert (st.st_uid, st.st_gid, mode_of(key)) == (uid, gid, mode), key


def assert_group_reaches_key(certbot: Certbot, name: str, group: str) -> None:
    """A process with only that group reads the key; one without it cannot, nor list archive/."""
    key = certbot.live(name) / "privkey.pem"
    member = run_as(NOBODY, NOBODY, [group], "cat", str(key))
    assert member.returncode == 0, member.stderr
    assert key_matches_cert(member.stdout.encode(), (certbot.live(name) / "cert.pem").read_bytes())
    outsider = run_as(NOBODY, NOBODY, None, "cat", str(key))
    assert outsider.returncode != 0 and "Permission denied" in outsider.stderr
    for listing in ("archive", "live"):
        for creds in ([group], None):
            ls = run_as(NOBODY, NOBODY, creds, "ls", str(certbot.config_dir / listing))
            assert ls.returncode != 0 and "Permission denied" in ls.stderr, (listing, creds)


def test_installer_group_and_mode_survive_three_renewals(certbot: Certbot, group: str) -> None:
    certbot.run("run", "-a", "standalone", "-i", "perms", "--cert-name", "mail",
                "-d", "mail.example.org", "-d", "smtp.example.org",
                "--perms-key-group", group, "--perms-key-mode", "0640")
    gid = grp.getgrnam(group).gr_gid
    assert_keys(certbot, "mail", 0, gid, 0o640, 1)
    conf = (certbot.config_dir / "renewal" / "mail.conf").read_text()
    assert "installer = perms" in conf and f"perms_key_group = {group}" in conf
    for _ in range(RENEWALS):
        certbot.renew("--force-renewal")  # no perms flags: restored from renewal conf
    assert_keys(certbot, "mail", 0, gid, 0o640, 1 + RENEWALS)
    assert_group_reaches_key(certbot, "mail", group)


def test_installer_owner_survives_renewals(certbot: Certbot, user: str, group: str) -> None:
    certbot.run("run", "-a", "standalone", "-i", "perms", "--cert-name", "owned",
                "-d", "ldap.example.org", "--perms-key-owner", user, "--perms-key-group", group)
    uid = pwd.getpwnam(user).pw_uid
    gid = grp.getgrnam(group).gr_gid
    for _ in range(2):
        certbot.renew("--force-renewal")
    assert_keys(certbot, "owned", uid, gid, 0o640, 3)
    reader = run_as(uid, gid, None, "cat", str(certbot.live("owned") / "privkey.pem"))
    assert reader.returncode == 0, reader.stderr


def test_cli_ini_sets_installer_options(certbot: Certbot, group: str, open_tmp: Path) -> None:
    cli_ini = open_tmp / "cli.ini"
    cli_ini.write_text(f"authenticator = standalone\ninstaller = perms\n"
                       f"perms-key-group = {group}\nperms-key-mode = 0640\n")
    certbot.run("run", "-c", str(cli_ini), "--cert-name", "ini", "-d", "mqtt.example.org")
    for _ in range(RENEWALS):
        certbot.renew("--force-renewal")  # without -c: the renewal conf carries the options
    assert_keys(certbot, "ini", 0, grp.getgrnam(group).gr_gid, 0o640, 1 + RENEWALS)
    assert_group_reaches_key(certbot, "ini", group)


def test_deploy_hook_command_keeps_group_across_renewals(certbot: Certbot, group: str) -> None:
    certbot.certonly("hooked", ["xmpp.example.org"],
                     "--deploy-hook", f"{PERMS} apply --key-group {group} --key-mode 0640")
    for _ in range(RENEWALS):
        certbot.renew("--force-renewal")
    assert_keys(certbot, "hooked", 0, grp.getgrnam(group).gr_gid, 0o640, 1 + RENEWALS)
    assert_group_reaches_key(certbot, "hooked", group)


def test_hook_script_in_renewal_hooks_reapplies_recorded_spec(certbot: Certbot,
                                                               group: str) -> None:
    certbot.certonly("script", ["imap.example.org"])
    applied = perms("apply", "--key-group", group, str(certbot.live("script")))
    assert applied.returncode == 0, applied.stderr
    hook_dir = certbot.config_dir / "renewal-hooks" / "deploy"
    hook = hook_dir / "certbot-perms"
    hook.write_text((Path(__file__).parent.parent / "hooks" / "certbot-perms").read_text())
    hook.chmod(0o755)
    certbot.extra_env["PATH"] = f"{Path(PERMS).parent}:{os.environ['PATH']}"
    certbot.renew("--force-renewal")
    assert_keys(certbot, "script", 0, grp.getgrnam(group).gr_gid, 0o640, 2)
    assert_group_reaches_key(certbot, "script", group)


@pytest.mark.parametrize("flag,value,message", [
    ("--perms-key-group", "no-such-group-cdk", "--perms-key-group: group 'no-such-group-cdk' "
                                               "does not exist"),
    ("--perms-key-mode", "0644", "--perms-key-mode: 0644 gives other users access"),
    ("--perms-key-mode", "0666", "--perms-key-mode: 0666 gives other users access"),
    ("--perms-key-mode", "rw-r", "--perms-key-mode: 'rw-r' is not an octal mode"),
    ("--perms-key-mode", "0660", "--perms-key-mode: 0660 lets the group write"),
])
def test_installer_bad_input_stops_before_anything_is_issued(
        certbot: Certbot, flag: str, value: str, message: str) -> None:
    result = certbot.run("run", "-a", "standalone", "-i", "perms", "--cert-name", "bad",
                         "-d", "bad.example.org", flag, value, check=False)
    assert result.returncode != 0
    assert message in result.stderr
    assert not certbot.live("bad").exists() and not certbot.archive("bad").exists()


@pytest.mark.parametrize("args,message", [
    (["--key-group", "no-such-group-cdk"], "--key-group: group 'no-such-group-cdk' does not exist"),
    (["--key-mode", "0644"], "--key-mode: 0644 gives other users access"),
    (["--key-mode", "0666"], "--key-mode: 0666 gives other users access"),
    (["--key-mode", "rw-r"], "--key-mode: 'rw-r' is not an octal mode"),
    (["--key-owner", "no-such-user-cdk"], "--key-owner: user 'no-such-user-cdk' does not exist"),
    (["--key-group", "0", "nosuchlineage"], "no such lineage"),
])
def test_hook_command_bad_input_one_line_nothing_changed(
        certbot: Certbot, args: list[str], message: str) -> None:
    certbot.certonly("kept", ["kept.example.org"])
    before = snapshot(certbot.config_dir)
    if args[-1] != "nosuchlineage":
        args = [*args, "kept"]
    result = perms("apply", "--config-dir", str(certbot.config_dir), *args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
    assert snapshot(certbot.config_dir) == before


def test_apply_is_idempotent(certbot: Certbot, group: str) -> None:
    certbot.certonly("idem", ["idem.example.org"])
    first = perms("apply", "--key-group", group, str(certbot.live("idem")))
    assert first.returncode == 0 and "-> root:" in first.stdout
    after_first = snapshot(certbot.config_dir)
    second = perms("apply", "--key-group", group, str(certbot.live("idem")))
    assert second.returncode == 0 and "->" not in second.stdout
    assert snapshot(certbot.config_dir) == after_first


def test_planted_symlink_in_archive_is_not_followed(certbot: Certbot, group: str,
                                                    open_tmp: Path) -> None:
    certbot.certonly("planted", ["planted.example.org"])
    victim = open_tmp / "victim"
    victim.write_text("not a key")
    victim.chmod(0o600)
    (certbot.archive("planted") / "privkey9.pem").symlink_to(victim)
    result = perms("apply", "--key-group", group, str(certbot.live("planted")))
    assert result.returncode == 0, result.stderr
    st = victim.stat()
    assert (st.st_uid, st.st_gid, mode_of(victim)) == (0, 0, 0o600)


def test_granting_group_tightens_other_lineages_world_readable_keys(
        certbot: Certbot, group: str) -> None:
    certbot.certonly("old", ["old.example.org"])
    certbot.certonly("new", ["new.example.org"])
    old_key = certbot.archive("old") / "privkey1.pem"
    old_key.chmod(0o644)  # what old certbot releases wrote
    result = perms("apply", "--key-group", group, str(certbot.live("new")))
    assert result.returncode == 0, result.stderr
    assert mode_of(old_key) == 0o640  # others' bits gone; group root untouched
    reader = run_as(NOBODY, NOBODY, [group], "cat", str(old_key))
    assert reader.returncode != 0


def test_check_finds_seeded_problems_and_fix_leaves_none(certbot: Certbot, group: str) -> None:
    certbot.certonly("audit", ["audit.example.org"])
    certbot.renew("--force-renewal")
    old_key = certbot.archive("audit") / "privkey1.pem"
    old_key.chmod(0o644)
    account_key = next(certbot.config_dir.glob("accounts/**/private_key.json"))
    account_key.chmod(0o644)
    config = str(certbot.config_dir)

    found = perms("check", "--config-dir", config)
    assert found.returncode == 1
    assert f"{old_key}: readable beyond 0600 root" in found.stdout
    assert f"{account_key}: account key mode 0644" in found.stdout

    as_json = perms("check", "--json", "--config-dir", config)
    paths = {f["path"] for f in json.loads(as_json.stdout)["findings"]}
    assert {str(old_key), str(account_key)} <= paths

    fixed = perms("check", "--fix", "--config-dir", config)
    assert fixed.returncode == 0, fixed.stdout
    assert mode_of(old_key) == 0o600 and mode_of(account_key) == 0o600
    clean = perms("check", "--config-dir", config)
    assert clean.returncode == 0 and "no key readable beyond its spec" in clean.stdout


def test_check_judges_keys_against_their_lineage_spec(certbot: Certbot, group: str) -> None:
    certbot.run("run", "-a", "standalone", "-i", "perms", "--cert-name", "spec",
                "-d", "spec.example.org", "--perms-key-group", group)
    config = str(certbot.config_dir)
    assert perms("check", "--config-dir", config).returncode == 0
    key = certbot.archive("spec") / "privkey1.pem"
    os.chown(key, 0, 0)  # drift: group lost
    found = perms("check", "--config-dir", config)
    assert found.returncode == 1 and f"{key}: readable beyond its lineage's spec" in found.stdout
    certbot.renew()  # nothing due: generic_updates heals the drift
    assert key.stat().st_gid == grp.getgrnam(group).gr_gid
    assert perms("check", "--config-dir", config).returncode == 0


def test_check_reports_acl_entries_no_spec_asks_for_and_fix_removes_them(
        certbot: Certbot, group: str) -> None:
    """A lineage moved from one group to another leaves the old group's search entries on
    live/ and archive/; an entry widened by hand (rx) lets its group list archive/."""
    certbot.certonly("moved", ["moved.example.org"])
    config = str(certbot.config_dir)
    old_group = f"{group}o"
    subprocess.run(["groupadd", "--system", old_group], check=True)
    try:
        assert perms("apply", "--key-group", old_group, str(certbot.live("moved"))
                     ).returncode == 0
        assert perms("apply", "--key-group", group, str(certbot.live("moved"))).returncode == 0
        subprocess.run(["setfacl", "-m", f"g:{group}:rx", str(certbot.config_dir / "archive")],
                       check=True)
        old_gid = grp.getgrnam(old_group).gr_gid
        found = perms("check", "--config-dir", config)
        assert found.returncode == 1
        stale = [line for line in found.stdout.splitlines()
                 if f"gives group {old_group} x, which no lineage's spec asks for" in line]
        # certbot makes live/ and archive/ 0700 and the lineage directories 0755: only
        # the first two needed (and got) an entry for the old group
        assert sorted(line.split(":")[0] for line in stale) == [f"{config}/archive",
                                                                f"{config}/live"]
        assert (f"{config}/archive: an ACL entry gives group {group} rx, "
                "more than the search (x)") in found.stdout
        lists = run_as(NOBODY, NOBODY, [group], "ls", f"{config}/archive")
        assert lists.returncode == 0  # the hand-made rx really lets the group list it

        fixed = perms("check", "--fix", "--config-dir", config)
        assert fixed.returncode == 0, fixed.stdout
        assert perms("check", "--config-dir", config).returncode == 0
        assert_group_reaches_key(certbot, "moved", group)  # x kept; listing gone
        old_member = run_as(NOBODY, NOBODY, [old_group], "cat",
                            str(certbot.live("moved") / "privkey.pem"))
        assert old_member.returncode != 0 and "Permission denied" in old_member.stderr
        for rel in ("live", "archive"):
            acl = subprocess.run(["getfacl", "-cn", f"{config}/{rel}"], capture_output=True,
                                 text=True, check=True).stdout
            assert f"group:{old_gid}:" not in acl, (rel, acl)
    finally:
        subprocess.run(["groupdel", old_group], check=False)


def test_unprivileged_certbot_warns_in_one_line_and_still_renews(
        certbot: Certbot, group: str, outsider_python: str) -> None:
    """certbot run as a plain user: the chown to root is refused, the renewal is not."""
    certbot.root.chmod(0o755)
    os.chown(certbot.root, NOBODY, NOBODY)
    base = certbot.command("run", "-a", "standalone", "-i", "perms", "--cert-name", "unpriv",
                           "-d", "unpriv.example.org", "--perms-key-owner", "root",
                           "--perms-key-group", str(NOBODY))

    def as_nobody(cmd: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*as_user(NOBODY, NOBODY), *cmd], env=certbot.env(),
                              capture_output=True, text=True, timeout=120)

    bundle = certbot.root / "ca.pem"  # a copy nobody can read; pytest's tmp is root-only
    shutil.copyfile(certbot.pebble.ca_bundle, bundle)
    bundle.chmod(0o644)
    certbot.extra_env["REQUESTS_CA_BUNDLE"] = str(bundle)
    issued = as_nobody(base)
    assert issued.returncode == 0, issued.stderr
    renewed = as_nobody(certbot.command("renew", "--force-renewal"))
    assert renewed.returncode == 0, renewed.stderr
    warnings = [line for line in renewed.stderr.splitlines() if "perms:" in line]
    assert warnings and "chown is not permitted for uid 65534 (run as root)" in warnings[0]
    for key in certbot.archive("unpriv").glob("privkey*.pem"):
        assert mode_of(key) & 0o077 == 0  # narrowed, never widened

"""certbot_perms on the paths a new user falls into (issue 12): a renewal whose spec
cannot be applied, a group change that must last, the global hook on lineages with no
spec, ids out of range. The real certbot CLI against pebble, real groups.
"""
from __future__ import annotations

import grp
import json
import os
import pwd
import secrets
import subprocess
from pathlib import Path

import pytest

from tests.support.site import mode_of
from tests.support.testbed import Certbot
from tests.support.users import NOBODY, run_as
from tests.test_perms_certbot import PERMS, assert_group_reaches_key, perms


def _keys(certbot: Certbot, name: str) -> list[tuple[int, int, int]]:
    keys = sorted(certbot.archive(name).glob("privkey*.pem"), key=lambda p: int(p.name[7:-4]))
    return [(k.lstat().st_uid, k.lstat().st_gid, mode_of(k)) for k in keys]


def _renewal_conf(certbot: Certbot, name: str) -> str:
    return (certbot.config_dir / "renewal" / f"{name}.conf").read_text()


@pytest.mark.parametrize("breakage", ["group deleted", "mode hand-edited to 0644"])
def test_a_renewal_that_cannot_apply_the_spec_fails_loudly_and_keeps_it(
        certbot: Certbot, group: str, breakage: str) -> None:
    certbot.run("run", "-a", "standalone", "-i", "perms", "--cert-name", "mail",
                "-d", "mail.example.org", "--perms-key-group", group)
    gid = grp.getgrnam(group).gr_gid
    assert _keys(certbot, "mail") == [(0, gid, 0o640)]
    conf = certbot.config_dir / "renewal" / "mail.conf"
    if breakage == "group deleted":
        subprocess.run(["groupdel", group], check=True)
    else:
        conf.write_text(conf.read_text().replace("perms_key_mode = None",
                                                  "perms_key_mode = 0644")
                        if "perms_key_mode = None" in conf.read_text()
                        else conf.read_text() + "perms_key_mode = 0644\n")
        assert "perms_key_mode = 0644" in conf.read_text()
    result = certbot.renew("--force-renewal", check=False)
    # Loud: certbot's own failure path, a non-zero exit, a line naming the lineage.
    assert result.returncode != 0, result.stdout
    said = result.stdout + result.stderr
    assert "perms: lineage mail: cannot apply its key spec" in said, said
    assert "all renewals succeeded" not in said
    # The renewed key is never wider than, nor someone else's than, the old one; a
    # gid whose group is gone gets nothing (a later groupadd would be given it).
    held = (0, 0, 0o600) if breakage == "group deleted" else (0, gid, 0o640)
    assert _keys(certbot, "mail") == [(0, gid, 0o640), held]
    # The spec stays recorded: fixing the cause makes the next renewal whole again.
    assert "installer = perms" in conf.read_text()
    if breakage == "group deleted":
        subprocess.run(["groupadd", "--system", "--gid", str(gid), group], check=True)
    else:
        conf.write_text(conf.read_text().replace("perms_key_mode = 0644",
                                                 "perms_key_mode = 0640"))
    certbot.renew("--force-renewal")
    assert _keys(certbot, "mail") == [(0, gid, 0o640)] * 3
    assert_group_reaches_key(certbot, "mail", group)


def test_a_deleted_group_makes_check_report_the_lineage_and_renew_fail(
        certbot: Certbot, group: str) -> None:
    certbot.run("run", "-a", "standalone", "-i", "perms", "--cert-name", "gone",
                "-d", "gone.example.org", "--perms-key-group", group)
    gid = grp.getgrnam(group).gr_gid
    subprocess.run(["groupdel", group], check=True)
    # Not due: certbot's daily renew still runs the installer's updater, which fails.
    result = certbot.renew(check=False)
    assert result.returncode != 0
    assert "perms: lineage gone: cannot apply its key spec" in result.stdout + result.stderr
    audit = perms("--config-dir", str(certbot.config_dir), "check", "--json")
    assert audit.returncode == 1
    findings = json.loads(audit.stdout)["findings"]
    assert any("gone" in f["path"] and "does not exist" in f["problem"] for f in findings), \
        findings
    # The group's x entries on live/ and archive/ outlive it: reported, and --fix removes
    # them (the next groupadd given that gid would otherwise reach the keys).
    orphaned = [f for f in findings if "which has no name (a deleted group)" in f["problem"]]
    assert {Path(f["path"]).name for f in orphaned} >= {"live", "archive"}, findings
    fixed = perms("--config-dir", str(certbot.config_dir), "check", "--fix", "--json")
    assert fixed.returncode == 1
    for top in ("live", "archive"):
        acl = subprocess.run(["getfacl", "-cn", str(certbot.config_dir / top)],
                             capture_output=True, text=True, check=True).stdout
        assert f"group:{gid}:" not in acl, acl


def test_a_deleted_owner_id_is_never_given_the_renewed_key(certbot: Certbot, user: str
                                                           ) -> None:
    certbot.run("run", "-a", "standalone", "-i", "perms", "--cert-name", "svc",
                "-d", "svc.example.org", "--perms-key-owner", user)
    uid = pwd.getpwnam(user).pw_uid
    assert _keys(certbot, "svc") == [(uid, 0, 0o600)]
    subprocess.run(["userdel", user], check=True)
    result = certbot.renew("--force-renewal", check=False)
    said = result.stdout + result.stderr
    assert result.returncode != 0, said
    assert "perms: lineage svc: cannot apply its key spec" in said, said
    assert "--perms-key-owner USER" in said, said  # the flag that fixes it, not the group's
    # Root's, not the bare uid a later useradd would be given.
    assert _keys(certbot, "svc") == [(uid, 0, 0o600), (0, 0, 0o600)]


def test_changing_the_group_through_a_reinstall_is_refused_naming_reconfigure(
        certbot: Certbot, group: str) -> None:
    other = f"cdk{secrets.token_hex(4)}"
    subprocess.run(["groupadd", "--system", other], check=True)
    try:
        certbot.run("run", "-a", "standalone", "-i", "perms", "--cert-name", "mail",
                    "-d", "mail.example.org", "--perms-key-group", group)
        before = _keys(certbot, "mail")
        again = certbot.run("run", "-a", "standalone", "-i", "perms", "--cert-name", "mail",
                            "-d", "mail.example.org", "--perms-key-group", other, check=False)
        said = again.stdout + again.stderr
        assert again.returncode != 0
        assert "certbot reconfigure --cert-name mail -i perms" in said, said
        assert _keys(certbot, "mail") == before  # nothing applied that renewal would undo
        by_hand = perms("--config-dir", str(certbot.config_dir), "apply", "--key-group",
                        other, "mail")
        assert by_hand.returncode == 2
        assert "records the perms installer" in by_hand.stderr
        assert "certbot reconfigure --cert-name mail" in by_hand.stderr
        assert not (certbot.config_dir / "certbot-perms" / "mail.conf").exists()
        # The way the message names, on a certbot that has it; else the forced renewal.
        way = (["reconfigure", "--cert-name", "mail", "-i", "perms", "--perms-key-group",
                other] if "reconfigure" in certbot.run("--help", "all").stdout else
               ["renew", "--cert-name", "mail", "--force-renewal", "-i", "perms",
                "--perms-key-group", other])
        certbot.run(*way)
        certbot.renew("--force-renewal")
        gid = grp.getgrnam(other).gr_gid
        assert _keys(certbot, "mail")[-1] == (0, gid, 0o640)
        assert f"perms_key_group = {other}" in _renewal_conf(certbot, "mail")
    finally:
        subprocess.run(["groupdel", other], check=False)


def test_the_global_hook_passes_over_a_lineage_with_no_spec(certbot: Certbot) -> None:
    hook_dir = certbot.config_dir / "renewal-hooks" / "deploy"
    hook_dir.mkdir(parents=True)
    hook = hook_dir / "certbot-perms"
    hook.write_text((Path(__file__).parent.parent / "hooks" / "certbot-perms").read_text())
    hook.chmod(0o755)
    certbot.extra_env["PATH"] = f"{Path(PERMS).parent}:{os.environ['PATH']}"
    result = certbot.certonly("plain", ["www.example.org"])
    said = result.stdout + result.stderr
    assert "no key spec recorded" not in said or "left as certbot made it" in said
    assert "reported error code" not in said, said
    assert _keys(certbot, "plain") == [(0, 0, 0o600)]
    # Named by hand with nothing recorded, it is still a usage error.
    named = perms("--config-dir", str(certbot.config_dir), "apply", "plain")
    assert named.returncode == 2 and "no key spec recorded" in named.stderr


@pytest.mark.parametrize("value", ["99999999999", "4294967295"])
def test_an_id_out_of_range_is_refused_before_anything_is_issued(certbot: Certbot,
                                                                 value: str) -> None:
    result = certbot.run("run", "-a", "standalone", "-i", "perms", "--cert-name", "big",
                         "-d", "big.example.org", "--perms-key-group", value, check=False)
    assert result.returncode != 0
    assert f"--perms-key-group: gid {value} is out of range (0 to 4294967294)" in result.stderr
    assert "Traceback" not in result.stderr and "OverflowError" not in result.stderr
    assert not certbot.live("big").exists()
    certbot.certonly("big", ["big.example.org"])
    by_hand = perms("--config-dir", str(certbot.config_dir), "apply", "--key-owner", value,
                    "big")
    assert by_hand.returncode == 2 and f"uid {value} is out of range" in by_hand.stderr
    assert _keys(certbot, "big") == [(0, 0, 0o600)]


def test_a_user_who_may_not_look_is_told_so_not_no_such_lineage(certbot: Certbot,
                                                                outsider_python: str) -> None:
    certbot.certonly("mail", ["mail.example.org"])
    result = run_as(NOBODY, NOBODY, None, PERMS, "--config-dir", str(certbot.config_dir),
                    "apply", "--key-mode", "0600", "mail")
    assert result.returncode == 1, result.stderr
    assert "Permission denied" in result.stderr and "no such lineage" not in result.stderr


def test_apply_warns_when_a_directory_above_keeps_the_group_out(
        certbot: Certbot, group: str) -> None:
    certbot.certonly("mail", ["mail.example.org"])
    certbot.root.chmod(0o700)  # e.g. a config dir under root's 0700 home
    applied = perms("--config-dir", str(certbot.config_dir), "apply", "--key-group", group,
                    "mail")
    assert applied.returncode == 0, applied.stderr
    assert (f"{certbot.root} (mode 0700) keeps group {group} out, so it cannot reach the key"
            in applied.stderr)
    assert f"setfacl -m g:{group}:x {certbot.root}" in applied.stderr
    denied = run_as(NOBODY, NOBODY, [group], "cat", str(certbot.live("mail") / "privkey.pem"))
    assert denied.returncode != 0  # the warning is true
    certbot.root.chmod(0o755)
    again = perms("--config-dir", str(certbot.config_dir), "apply", "--key-group", group, "mail")
    assert "keeps group" not in again.stderr
    assert_group_reaches_key(certbot, "mail", group)

"""certbot-atomic-deploy against real files, real keys, and real certbot/pebble lineages.

Every test runs the installed console script as a subprocess, the way certbot
runs a deploy hook, and then re-reads the disk.
"""
from __future__ import annotations

import fcntl
import grp
import json
import os
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.pki import key_matches_cert, make_chain, pem_of
from tests.support.site import (
    DEPLOY,
    basic_conf,
    deploy,
    lineage_bytes,
    mode_of,
    new_version,
    one_line,
    snapshot,
    temp_files,
    write_conf,
    write_lineage,
)
from tests.support.testbed import Certbot


def test_issue_and_three_renewals_through_the_hook(certbot: Certbot, open_tmp: Path,
                                                   group: str) -> None:
    out = open_tmp / "out"
    out.mkdir(mode=0o755)
    reload_log = open_tmp / "reloads.log"
    certbot.config_dir.mkdir(parents=True)
    write_conf(certbot.config_dir, f"""\
[defaults]
reload = echo "$RENEWED_LINEAGE" >> {reload_log}
keep = 2

[postfix]
lineage = mail
path = {out}/postfix/mail.pem
format = postfix

[haproxy]
lineage = mail
path = {out}/haproxy/mail.pem
format = haproxy
group = {group}
mode = 0640

[cert-only]
domains = smtp.example.org
path = {out}/mail-cert.pem
format = fullchain

[dir]
lineage = mail
directory = {out}/versions
group = {group}
keep = 2
# versions go once two newer ones exist (the default also waits a day for readers)
keep_seconds = 0
""")
    for sub in ("postfix", "haproxy"):
        (out / sub).mkdir(mode=0o755)
    certbot.extra_env["PATH"] = f"{Path(DEPLOY).parent}:{os.environ['PATH']}"
    certbot.certonly("mail", ["mail.example.org", "smtp.example.org"],
                     "--deploy-hook", "certbot-atomic-deploy")
    for _ in range(3):
        certbot.renew("--force-renewal")

    now = lineage_bytes(certbot.config_dir, "mail")
    postfix = (out / "postfix" / "mail.pem").read_bytes()
    assert postfix == now["privkey"] + now["cert"] + now["chain"]
    haproxy = (out / "haproxy" / "mail.pem").read_bytes()
    assert haproxy == now["cert"] + now["chain"] + now["privkey"]
    assert (out / "mail-cert.pem").read_bytes() == now["fullchain"]
    for path, uid, gid, mode in (
            (out / "postfix" / "mail.pem", 0, 0, 0o600),
            (out / "haproxy" / "mail.pem", 0, grp.getgrnam(group).gr_gid, 0o640),
            (out / "mail-cert.pem", 0, 0, 0o644)):
        st = path.stat()
        assert (st.st_uid, st.st_gid, mode_of(path)) == (uid, gid, mode), path
    for args in (["pkey", "-noout"], ["x509", "-noout"]):
        parsed = subprocess.run(["openssl", *args, "-in", str(out / "postfix" / "mail.pem")],
                                capture_output=True)
        assert parsed.returncode == 0, parsed.stderr
    assert key_matches_cert(postfix, postfix)

    versions = out / "versions"
    assert os.readlink(versions / "current") == "v4"
    assert sorted(p.name for p in versions.iterdir()) == ["current", "v2", "v3", "v4"]
    current = versions / "current"
    assert (current / "combined.pem").read_bytes() == postfix
    assert (current / "privkey.pem").read_bytes() == now["privkey"]
    assert mode_of(current / "privkey.pem") == 0o640 and mode_of(current / "cert.pem") == 0o644
    assert temp_files(out) == []
    # one reload per run although four targets share it: issuance + three renewals
    assert reload_log.read_text().splitlines() == [str(certbot.live("mail"))] * 4


def test_unchanged_content_is_a_no_op(site: Path) -> None:
    log = site / "reload.log"
    basic_conf(site, f"reload = echo run >> {log}")
    assert deploy(site / "le", "deploy", "--all").returncode == 0
    before = snapshot(site / "out")
    again = deploy(site / "le", "deploy", "--all")
    assert again.returncode == 0 and "unchanged" in again.stdout
    assert snapshot(site / "out") == before
    assert log.read_text() == "run\n"


def test_dry_run_prints_plan_and_changes_nothing(site: Path) -> None:
    basic_conf(site)
    before = snapshot(site)
    result = deploy(site / "le", "deploy", "--all", "--dry-run")
    assert result.returncode == 0
    assert "would publish mail v1" in result.stdout and "root:root 0600" in result.stdout
    assert snapshot(site) == before


@pytest.mark.parametrize("material,message", [
    ("mismatch", "the key does not match the certificate"),
    ("expired", "expired"),
    ("not-yet", "not valid before"),
    ("wrong-issuer", "is not issued by certificate 2"),
    ("der", "not PEM (it looks like DER"),
    ("encrypted", "the key is encrypted"),
    ("empty", "empty file"),
    ("truncated", "truncated PEM"),
])
def test_bad_material_is_refused_and_no_target_changes(site: Path, material: str,
                                                       message: str) -> None:
    basic_conf(site)
    assert deploy(site / "le", "deploy", "--all").returncode == 0
    before = snapshot(site / "out")
    key, chain = make_chain(["mail.example.org"])
    raw: dict[str, bytes] = {}
    if material == "mismatch":
        raw["privkey"] = pem_of(ec.generate_private_key(ec.SECP256R1()))
    elif material in ("expired", "not-yet"):
        key, chain = make_chain(["mail.example.org"],
                                days_valid=(-90, -1) if material == "expired" else (1, 90))
    elif material == "wrong-issuer":
        _, other = make_chain(["mail.example.org"])
        chain = [chain[0], other[1]]
    elif material == "der":
        raw["cert"] = chain[0].public_bytes(serialization.Encoding.DER)
    elif material == "encrypted":
        raw["privkey"] = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"))
    elif material == "empty":
        raw["privkey"] = b""
    elif material == "truncated":
        full = chain[0].public_bytes(serialization.Encoding.PEM)
        raw["fullchain"] = full[: len(full) // 2]
    write_lineage(site / "le", "mail", 2, pem_of(key), chain, raw=raw)
    result = deploy(site / "le", "deploy", "--all")
    assert result.returncode == 1
    assert message in one_line(result)
    assert snapshot(site / "out") == before


@pytest.mark.parametrize("body,message", [
    ("[t]\nlineage = mail\npath = {out}/x.pem\nformat = postfix\ncolour = blue\n",
     "[t] colour: unknown key"),
    ("[t]\nlineage = mail\npath = {out}/x.pem\n", "[t] format: missing"),
    ("[t]\nlineage = mail\npath = {out}/x.pem\nformat = pfx\n", "[t] format:"),
    ("[t]\nlineage = mail\npath = {out}/x.pem\nformat = key\nmode = 0644\n",
     "[t] mode: 0644 gives other users access"),
    ("[t]\nlineage = mail\npath = {out}/x.pem\nformat = key\ngroup = no-such-grp-cdk\n",
     "[t] group: group 'no-such-grp-cdk' does not exist"),
    ("[t]\nlineage = mail\npath = {out}/x.pem\ndirectory = {out}/d\n",
     "[t]: give exactly one of path = FILE or directory = DIR"),
    ("[t]\npath = {out}/x.pem\nformat = key\n", "[t]: say which lineage"),
    ("[t]\nlineage = mail\npath = x.pem\nformat = key\n", "[t] path: 'x.pem' is not an absolute"),
    ("[defaults]\nkeep = many\n[t]\nlineage = mail\npath = {out}/x.pem\nformat = key\n",
     "[defaults] keep:"),
    ("stray = 1\n[t]\nlineage = mail\npath = {out}/x.pem\nformat = key\n",
     "'stray' is outside any section"),
    ("[t]\nlineage = mail\npath = {out}/x.pem, {out}/y.pem\nformat = key\n",
     "[t] path: takes one value, not a list"),
    ("[t]\nlineage = mail\npath = {out}/x.pem\nformat = key\nkeep = 101\n",
     "[t] keep: '101' is not a number from 0 to 100"),
    ("[t]\nlineage = mail\npath = {out}/x.pem\nformat = key\n[[inner]]\nkeep = 1\n",
     "[t] [[inner]]: unknown subsection"),
    ("[t]\nlineage = mail\npreset = postfx\npath = {out}/x.pem\n",
     "[t] preset: 'postfx' is not one of"),
])
def test_broken_config_one_line_exit_2_nothing_written(site: Path, body: str,
                                                       message: str) -> None:
    conf = write_conf(site / "le", body.format(out=site / "out"))
    before = snapshot(site)
    result = deploy(site / "le", "deploy", "--all")
    assert result.returncode == 2
    line = one_line(result)
    assert str(conf) in line and message in line
    assert snapshot(site) == before


def test_failed_check_rolls_back_and_skips_reload(site: Path) -> None:
    log = site / "reload.log"
    flag = site / "break-check"
    basic_conf(site, f"check = test ! -e {flag}\nreload = echo run >> {log}")
    assert deploy(site / "le", "deploy", "--all").returncode == 0
    old = (site / "out" / "mail.pem").read_bytes()
    new_version(site)
    flag.touch()
    result = deploy(site / "le", "deploy", "--all")
    assert result.returncode == 1
    line = one_line(result)
    assert "[postfix] check" in line and "failed" in line and "restored the previous" in line
    assert (site / "out" / "mail.pem").read_bytes() == old
    assert log.read_text() == "run\n"  # only the first run's reload
    assert temp_files(site / "out") == []


def test_failed_check_on_versioned_directory_switches_back(site: Path) -> None:
    write_conf(site / "le", f"[d]\nlineage = mail\ndirectory = {site}/out/d\ncheck = false\n")
    result = deploy(site / "le", "deploy", "--all")
    assert result.returncode == 1 and "removed (there was none before)" in one_line(result)
    assert not (site / "out" / "d" / "current").exists()
    assert list((site / "out" / "d").iterdir()) == []


def test_symlink_planted_at_destination_is_not_followed(site: Path) -> None:
    basic_conf(site)
    victim = site / "victim"
    victim.write_text("precious")
    (site / "out" / "mail.pem").symlink_to(victim)
    result = deploy(site / "le", "deploy", "--all")
    assert result.returncode == 1 and "is a symlink; refusing" in one_line(result)
    assert victim.read_text() == "precious" and mode_of(victim) == 0o644
    assert os.readlink(site / "out" / "mail.pem") == str(victim)


def test_symlink_planted_at_temp_name_is_not_followed(site: Path) -> None:
    basic_conf(site)
    victim = site / "victim"
    victim.write_text("precious")
    planted = site / "out" / ".mail.pem.0123456789abcdef.tmp"
    planted.symlink_to(victim)
    result = deploy(site / "le", "deploy", "--all")
    assert result.returncode == 0, result.stderr
    assert victim.read_text() == "precious"
    assert not planted.is_symlink()  # a leftover name: removed, never written through


def test_destination_directory_writable_by_others_is_refused(site: Path) -> None:
    basic_conf(site)
    (site / "out").chmod(0o777)
    result = deploy(site / "le", "deploy", "--all")
    assert result.returncode == 1
    assert "unsafe directory, writable by others" in one_line(result)
    assert list((site / "out").iterdir()) == []


def test_second_run_waits_then_gives_up_on_the_lock(site: Path) -> None:
    basic_conf(site)
    assert deploy(site / "le", "deploy", "--all").returncode == 0
    lock = site / "le" / "atomic-deploy.state" / "lock"
    with open(lock, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result = deploy(site / "le", "--lock-timeout", "0.5", "deploy", "--all")
    assert result.returncode == 2
    assert "another certbot-atomic-deploy run has held it for over 0.5 s" in one_line(result)


def test_rollback_restores_previous_version_and_reloads(site: Path) -> None:
    log = site / "reload.log"
    write_conf(site / "le", f"""\
[postfix]
lineage = mail
path = {site}/out/mail.pem
format = postfix
reload = echo file >> {log}

[dir]
lineage = mail
directory = {site}/out/d
""")
    assert deploy(site / "le", "deploy", "--all").returncode == 0
    first = (site / "out" / "mail.pem").read_bytes()
    new_version(site)
    assert deploy(site / "le", "deploy", "--lineage", "mail").returncode == 0
    assert (site / "out" / "mail.pem").read_bytes() != first
    result = deploy(site / "le", "rollback", "postfix")
    assert result.returncode == 0, result.stderr
    assert (site / "out" / "mail.pem").read_bytes() == first
    assert mode_of(site / "out" / "mail.pem") == 0o600
    assert log.read_text() == "file\nfile\nfile\n"
    assert deploy(site / "le", "rollback", "dir").returncode == 0
    assert os.readlink(site / "out" / "d" / "current") == "v1"
    status = json.loads(deploy(site / "le", "status", "--json").stdout)
    assert {r["target"]: (r["version"], r["in_sync"]) for r in status} == {
        "postfix": (1, False), "dir": (1, False)}


def test_hook_mode_deploys_only_the_renewed_lineage(site: Path) -> None:
    key, chain = make_chain(["www.example.org"])
    write_lineage(site / "le", "www", 1, pem_of(key), chain)
    write_conf(site / "le", f"""\
[mail]
lineage = mail
path = {site}/out/mail.pem
format = postfix

[www]
domains = *.example.org, www.example.org
path = {site}/out/www.pem
format = haproxy
""")
    env = dict(os.environ, RENEWED_LINEAGE=str(site / "le" / "live" / "www"))
    result = subprocess.run([DEPLOY], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (site / "out" / "www.pem").exists() and not (site / "out" / "mail.pem").exists()


def test_status_json_reports_serial_expiry_and_sync(site: Path) -> None:
    basic_conf(site)
    assert deploy(site / "le", "deploy", "--all").returncode == 0
    rows = json.loads(deploy(site / "le", "status", "--json").stdout)
    assert len(rows) == 1
    row = rows[0]
    leaf = x509.load_pem_x509_certificate((site / "le" / "live" / "mail" / "cert.pem").read_bytes())
    assert row["serial"] == f"{leaf.serial_number:x}" and row["in_sync"] is True
    assert row["lineage"] == "mail" and row["version"] == 1
    new_version(site)
    stale = deploy(site / "le", "status")
    assert stale.returncode == 1 and "lineage is at v2; run deploy" in stale.stdout


def test_immutable_destination_fails_with_a_clear_line_and_stays(site: Path) -> None:
    basic_conf(site)
    assert deploy(site / "le", "deploy", "--all").returncode == 0
    dest = site / "out" / "mail.pem"
    old = dest.read_bytes()
    if subprocess.run(["chattr", "+i", str(dest)], capture_output=True).returncode != 0:
        pytest.skip("this filesystem does not support chattr +i")
    try:
        new_version(site)
        result = deploy(site / "le", "deploy", "--all")
    finally:
        subprocess.run(["chattr", "-i", str(dest)], check=True)
    assert result.returncode == 1
    line = one_line(result)
    assert str(dest) in line and "immutable" in line
    assert dest.read_bytes() == old
    assert temp_files(site / "out") == []


def test_commands_get_path_lineage_and_domains_shell_quoted(site: Path) -> None:
    odd = site / "out" / "we ird $(touch pwned); x"
    odd.mkdir(mode=0o755)
    log = site / "args.log"
    write_conf(site / "le", f"""\
[odd]
lineage = mail
path = {odd}/mail.pem
format = key
reload = "printf '%s|' {{path}} {{lineage}} {{domains}} > {log}"
""")
    result = deploy(site / "le", "deploy", "--all")
    assert result.returncode == 0, result.stderr
    assert log.read_text() == f"{odd}/mail.pem|mail|mail.example.org smtp.example.org|"
    assert not list(site.rglob("pwned"))


def test_all_says_when_no_lineage_covers_a_domains_target(site: Path) -> None:
    write_conf(site / "le", f"[www]\ndomains = www.example.net\npath = {site}/out/www.pem\n"
                            "format = haproxy\n")
    result = deploy(site / "le", "deploy", "--all")
    assert result.returncode == 1
    line = one_line(result)
    assert "[www] domains: no lineage in" in line and "covers www.example.net" in line
    assert one_line(result).count("[www]") == 1
    assert list((site / "out").iterdir()) == []


def test_a_named_lineage_that_does_not_exist_is_one_line(site: Path) -> None:
    write_conf(site / "le", f"[t]\nlineage = nosuch\npath = {site}/out/t.pem\nformat = key\n")
    result = deploy(site / "le", "deploy", "--all")
    assert result.returncode == 1
    assert "live/nosuch: missing (is 'nosuch' a certbot lineage?" in one_line(result)

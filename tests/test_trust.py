"""Issue 23 end to end, as a hostile local user would try it: ACLs that give a key away,
output that forges lines, a spool that holds what is no marker, a run that cannot read
its config. The real command on a certbot-shaped site, real ACLs, real uids.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path

from tests.support.pki import make_chain, pem_of
from tests.support.site import basic_conf, deploy, new_version, one_line, write_lineage
from tests.support.users import NOBODY, run_as


def getfacl(path: Path) -> str:
    return subprocess.run(["getfacl", "-cnp", str(path)], check=True, capture_output=True,
                          text=True).stdout


def test_a_default_acl_on_the_destination_never_lets_its_group_read_the_key(
        site: Path) -> None:
    out = site / "out"
    subprocess.run(["setfacl", "-d", "-m", f"u:{NOBODY}:r", str(out)], check=True)
    basic_conf(site, "mode = 0640")
    assert deploy(site / "le", "deploy", "--all").returncode == 0
    published = out / "mail.pem"
    assert f"user:{NOBODY}" not in getfacl(published), getfacl(published)
    # The real kernel says it: the uid the directory's default ACL named reads nothing.
    reader = run_as(NOBODY, NOBODY, None, "cat", str(published))
    assert reader.returncode != 0 and "Permission denied" in reader.stderr


def test_an_acl_added_to_a_published_key_is_noticed_and_taken_away(site: Path) -> None:
    basic_conf(site, "mode = 0640")
    assert deploy(site / "le", "deploy", "--all").returncode == 0
    published = site / "out" / "mail.pem"
    subprocess.run(["setfacl", "-m", f"u:{NOBODY}:r", str(published)], check=True)
    assert stat.S_IMODE(published.stat().st_mode) == 0o640  # the mode bits look the same
    assert run_as(NOBODY, NOBODY, None, "cat", str(published)).returncode == 0  # it leaks
    status = deploy(site / "le", "status", "--json")
    assert status.returncode == 1
    row = json.loads(status.stdout)[0]
    assert row["in_sync"] is False and "an ACL entry" in row["detail"], row
    again = deploy(site / "le", "deploy", "--all")
    assert again.returncode == 0 and "published" in again.stdout, again.stdout
    assert f"user:{NOBODY}" not in getfacl(published)
    assert run_as(NOBODY, NOBODY, None, "cat", str(published)).returncode != 0
    assert deploy(site / "le", "status").returncode == 0


def test_a_config_another_user_may_write_through_an_acl_runs_nothing(site: Path) -> None:
    witness = site / "ran"
    conf = basic_conf(site, f"reload = touch {witness}")
    subprocess.run(["setfacl", "-m", f"u:{NOBODY}:rw", str(conf)], check=True)
    result = deploy(site / "le", "deploy", "--all")
    assert result.returncode == 2
    line = one_line(result)
    assert f"user:nobody:rw- lets uid {NOBODY} write it" in line, line
    assert f"setfacl -b {conf}" in line
    assert not witness.exists() and not (site / "out" / "mail.pem").exists()


def test_a_san_that_holds_a_newline_cannot_forge_a_line(site: Path) -> None:
    forged = "x\n[postfix] published: FORGED\x1b[2J"
    key, chain = make_chain(["mail.example.org", forged])
    write_lineage(site / "le", "mail", 2, pem_of(key), chain)
    basic_conf(site, "domains = other.example.org")  # which it does not cover: named in the error
    result = deploy(site / "le", "deploy", "--all")
    assert result.returncode == 1
    line = one_line(result)
    assert "x\\n[postfix] published: FORGED\\x1b[2J" in line, line
    assert "\x1b" not in result.stderr + result.stdout
    assert not any(row.startswith("[postfix] published") for row in result.stdout.splitlines())


def test_a_spool_that_holds_what_is_no_marker_deploys_and_backs_off(site: Path) -> None:
    basic_conf(site)
    spool = site / "spool"
    spool.mkdir()
    os.chown(spool, NOBODY, NOBODY)  # the unprivileged certbot's
    (spool / "mail").write_text("2026-12-07T00:00:00+00:00\n")
    (spool / "empty").mkdir()
    (spool / "full").mkdir()
    (spool / "full" / "x").write_text("")
    (spool / "evil\nmarker").write_text("")
    os.mkfifo(spool / "fifo")
    first = deploy(site / "le", "deploy", "--spool", str(spool))
    assert first.returncode == 0, first.stderr
    assert (site / "out" / "mail.pem").exists()
    assert "took 4 marker(s): empty, evil\\nmarker, fifo, mail" in first.stdout, first.stdout
    assert one_line(first).endswith(f"--spool {spool}: full: a directory, not a marker; left "
                                    "alone (remove it: only markers belong there)")
    assert sorted(os.listdir(spool)) == ["full"]
    # The path unit would start it again at once (the spool is not empty): it waits.
    started = time.monotonic()
    second = deploy(site / "le", "deploy", "--spool", str(spool))
    took = time.monotonic() - started
    assert second.returncode == 0
    assert "spool run(s) failed or left the spool unemptied; waiting" in second.stderr
    assert took >= 4.0  # a lower bound holds however busy the machine is
    # Once it is emptied, the next run takes it and no longer waits.
    (spool / "full" / "x").unlink()
    (spool / "full").rmdir()
    record = json.loads((site / "le" / "atomic-deploy.state" / "runs.json").read_text())
    assert record["failures"] == 2


def test_a_run_that_cannot_read_its_config_says_so_in_the_metrics(site: Path) -> None:
    metrics = site / "metrics"
    metrics.mkdir()
    prom = metrics / "certs.prom"
    conf = basic_conf(site, "")
    conf.write_text(f"[defaults]\nmetrics_file = {prom}\n" + conf.read_text())
    assert deploy(site / "le", "deploy", "--all").returncode == 0
    good = prom.read_text().splitlines()
    assert "certbot_atomic_deploy_last_run_success 1" in good
    assert 'certbot_atomic_deploy_target_in_sync{target="postfix"} 1' in good
    conf.write_text(conf.read_text() + "typo without equals\n")
    new_version(site)
    failed = deploy(site / "le", "deploy", "--all")
    assert failed.returncode == 2
    text = prom.read_text().splitlines()
    assert "certbot_atomic_deploy_last_run_success 0" in text
    assert "certbot_atomic_deploy_last_run_success 1" not in text
    assert 'certbot_atomic_deploy_target_in_sync{target="postfix"} 1' in text  # kept
    stamp = next(line for line in text
                 if line.startswith("certbot_atomic_deploy_last_run_timestamp_seconds"))
    assert abs(float(stamp.split()[1]) - time.time()) < 600

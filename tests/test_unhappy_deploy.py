"""certbot-atomic-deploy on the paths a new user falls into (issue 12): configs others can
change, targets over certbot's own files or each other, targets that several lineages
match, and the rough edges of the by-hand commands. Each runs the installed command.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.pki import make_chain, pem_of
from tests.support.site import (
    DEPLOY,
    basic_conf,
    deploy,
    one_line,
    snapshot,
    write_conf,
    write_lineage,
)
from tests.support.users import NOBODY


@pytest.mark.parametrize("how", ["mode 0666", "mode 0620 group 1", "owned by nobody",
                                 "directory 0777", "parent owned by nobody"])
def test_a_config_others_can_change_is_refused_and_its_commands_never_run(
        site: Path, how: str) -> None:
    marker = site / "ran"
    conf = basic_conf(site, f"check = touch {marker}\nreload = touch {marker}")
    holder = site / "le"
    if how.startswith("mode"):
        conf.chmod(int(how.split()[1], 8))
        if "group" in how:
            os.chown(conf, 0, 1)
    elif how == "owned by nobody":
        os.chown(conf, NOBODY, NOBODY)
    else:
        # The config in a sub-directory of the config dir, reached through --config.
        holder = site / "le" / "deploy.d"
        holder.mkdir()
        conf = conf.rename(holder / "atomic-deploy.conf")
        if how == "directory 0777":
            holder.chmod(0o777)
        else:
            os.chown(holder, NOBODY, NOBODY)
    before = snapshot(site / "out")
    for command in (["check-config"], ["deploy", "--all"], ["status"]):
        result = deploy(site / "le", "--config", str(conf), *command)
        assert result.returncode == 2, (command, result.stderr)
        line = one_line(result)
        assert line.startswith(f"certbot-atomic-deploy: {conf}: refused"), line
        assert "chmod go-w" in line or "chown root" in line, line
    assert not marker.exists()
    assert snapshot(site / "out") == before


def test_relative_and_symlinked_config_paths_mean_the_file_itself(site: Path) -> None:
    conf = basic_conf(site)
    link = site / "link.conf"
    link.symlink_to(conf)
    result = subprocess.run([DEPLOY, "--config-dir", str(site / "le"), "--config",
                             "atomic-deploy.conf", "deploy", "--all"], capture_output=True,
                            text=True, timeout=60, cwd=site / "le")
    assert result.returncode == 0, result.stderr
    # Through the link: the same state (so "unchanged") and the same lock.
    again = deploy(site / "le", "--config", str(link), "deploy", "--all")
    assert again.returncode == 0 and "unchanged" in again.stdout, again.stderr
    assert not (site / "link.state").exists()
    assert sorted(p.name for p in site.glob("**/*.state")) == ["atomic-deploy.state"]


@pytest.mark.parametrize("where, message", [
    ("path = {le}/archive/mail/privkey1.pem\nformat = cert",
     "would write into certbot's config dir"),
    ("path = {le}/live/mail/fullchain.pem\nformat = fullchain",
     "would write into certbot's config dir"),
    ("directory = {le}/tls", "would write into certbot's config dir"),
    ("directory = {site}", "would write into certbot's config dir"),
    ("path = {le}/atomic-deploy.state/state.json\nformat = cert",
     "would write into certbot's config dir"),
    ("path = /var/lib/letsencrypt/x.pem\nformat = cert", "certbot's own directory"),
    ("path = /\nformat = cert", "is the root directory"),
    ("directory = /", "is the root directory"),
    ("path = {site}/out/d/current/privkey.pem\nformat = key", "is inside [d]'s"),
    ("path = {site}/out/d/v1/cert.pem\nformat = cert", "is inside [d]'s"),
    ("directory = {site}/out/d/inner", "is inside [d]'s"),
])
def test_a_target_over_certbots_files_or_another_target_is_refused(
        site: Path, where: str, message: str) -> None:
    write_conf(site / "le", f"[d]\nlineage = mail\ndirectory = {site}/out/d\n\n"
                            f"[x]\nlineage = mail\n"
                            f"{where.format(le=site / 'le', site=site)}\n")
    before = snapshot(site)
    for command in (["check-config"], ["deploy", "--all"]):
        result = deploy(site / "le", *command)
        assert result.returncode == 2, result.stderr
        assert message in one_line(result) and "[x]" in one_line(result)
    assert snapshot(site) == before


def test_a_state_dir_beside_a_config_elsewhere_is_protected_too(site: Path) -> None:
    elsewhere = site / "etc"
    elsewhere.mkdir()
    conf = write_conf(elsewhere, f"[x]\nlineage = mail\npath = {elsewhere}/atomic-deploy.state/"
                                 "x.pem\nformat = cert\n")
    result = deploy(site / "le", "--config", str(conf), "check-config")
    assert result.returncode == 2 and "this config's run state" in one_line(result)


def _two_lineages_for(site: Path) -> None:
    for name in ("a", "b"):
        key, chain = make_chain([f"{name}.example.org", "shared.example.org"])
        write_lineage(site / "le", name, 1, pem_of(key), chain)


def test_a_target_naming_two_lineages_is_a_config_error(site: Path) -> None:
    _two_lineages_for(site)
    write_conf(site / "le", f"[t]\nlineage = a, b\npath = {site}/out/t.pem\nformat = cert\n")
    result = deploy(site / "le", "check-config")
    assert result.returncode == 2
    assert "[t] lineage: names 2 lineages; a target takes one" in one_line(result)


def test_a_domains_target_several_lineages_match_is_refused_in_every_mode(site: Path) -> None:
    """It used to take whichever lineage certbot had just renewed, flipping between them."""
    _two_lineages_for(site)
    write_conf(site / "le", f"[t]\ndomains = shared.example.org\npath = {site}/out/t.pem\n"
                            "format = cert\n")
    message = "domains shared.example.org match lineages a, b; a target takes one lineage"
    checked = deploy(site / "le", "check-config")
    assert checked.returncode == 2 and message in one_line(checked)
    for lineage in ("a", "b"):
        env = dict(os.environ, RENEWED_LINEAGE=str(site / "le" / "live" / lineage))
        hook = subprocess.run([DEPLOY], capture_output=True, text=True, env=env, timeout=60)
        assert hook.returncode == 2 and message in one_line(hook)
        by_hand = deploy(site / "le", "deploy", "--lineage", lineage)
        assert by_hand.returncode == 2 and message in one_line(by_hand)
    assert not (site / "out" / "t.pem").exists()
    # Naming one makes it work, and check-config says which the globs chose.
    write_conf(site / "le", f"[t]\ndomains = a.example.org\npath = {site}/out/t.pem\n"
                            "format = cert\n")
    checked = deploy(site / "le", "check-config")
    assert checked.returncode == 0 and "(now: a)" in checked.stdout


def test_deploy_names_a_lineage_that_does_not_exist(site: Path) -> None:
    basic_conf(site)
    result = deploy(site / "le", "deploy", "--lineage", "mial")
    assert result.returncode == 2
    assert "deploy --lineage mial: no such lineage in" in one_line(result)
    key, chain = make_chain(["www.example.org"])
    write_lineage(site / "le", "www", 1, pem_of(key), chain)
    result = deploy(site / "le", "deploy", "--lineage", "www")
    assert result.returncode == 0, result.stderr
    assert "no target in" in result.stdout and "takes www" in result.stdout

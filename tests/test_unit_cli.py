"""Both commands called as ``main([...])``, as the user running the tests: config rules,
presets, exit codes, one-line errors, and a whole deploy into directories the user owns.

Unit tier: no root, no network. Owner and group are the user's own (numeric),
so nothing here needs a chown that only root may do.
"""
from __future__ import annotations

import argparse
import ast
import importlib.metadata
import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from certbot_atomic_deploy import cli as deploy_cli
from certbot_atomic_deploy.config import load
from certbot_atomic_deploy.presets import PRESETS
from certbot_perms import cli as perms_cli
from daemon_keys.errors import ConfigError, describe_unexpected
from daemon_keys.keyspec import parse_mode
from tests.support.pki import make_chain, pem_of
from tests.support.site import make_site, snapshot, write_lineage, write_password
from tests.support.site import run_main as run

ME, MY_GROUP = os.geteuid(), os.getegid()


@pytest.fixture
def own_site(tmp_path: Path) -> Path:
    """SITE/le with lineage 'mail' and SITE/out, in the user's own temp dir."""
    return make_site(tmp_path)


def conf(site: Path, body: str) -> Path:
    path = site / "le" / "atomic-deploy.conf"
    path.write_text(f"[defaults]\nowner = {ME}\ngroup = {MY_GROUP}\n\n{body}")
    return path


def test_a_deploy_publishes_once_and_reloads_once(own_site: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    log = own_site / "reloads.log"
    conf(own_site, f"[mail]\nlineage = mail\npath = {own_site}/out/mail.pem\nformat = postfix\n"
               f"mode = 0640\nreload = echo reloaded >> {log}\n")
    code, out, err = run(capsys, deploy_cli.main, "--config-dir", str(own_site / "le"),
                         "deploy", "--all")
    assert (code, err) == (0, []), err
    published = own_site / "out" / "mail.pem"
    data = published.read_bytes()
    assert data.startswith(b"-----BEGIN PRIVATE KEY-----")  # key first, for Postfix
    st = published.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, ME, MY_GROUP)
    code, out, err = run(capsys, deploy_cli.main, "--config-dir", str(own_site / "le"),
                         "deploy", "--all")
    assert code == 0 and "unchanged" in out
    assert log.read_text() == "reloaded\n"  # the second run had nothing to reload


def test_the_hook_deploys_the_lineage_certbot_names(own_site: Path,
                                                    capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    conf(own_site, f"[mail]\nlineage = mail\npath = {own_site}/out/mail.pem\nformat = haproxy\n")
    monkeypatch.setenv("RENEWED_LINEAGE", str(own_site / "le" / "live" / "mail"))
    code, _out, err = run(capsys, deploy_cli.main)
    assert (code, err) == (0, [])
    assert (own_site / "out" / "mail.pem").read_bytes().rstrip().endswith(b"PRIVATE KEY-----")


def test_no_command_outside_certbot_is_a_usage_error(capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RENEWED_LINEAGE", raising=False)
    code, _out, err = run(capsys, deploy_cli.main)
    assert code == 2
    assert err == ["certbot-atomic-deploy: no command given and $RENEWED_LINEAGE is not set "
                   "(run 'deploy --all', or use this as certbot's --deploy-hook)"]


@pytest.mark.parametrize("section,message", [
    ("[t]\nlineage = mail\npath = {out}/a.pem\nformat = postfix\ncolour = blue\n",
     "[t] colour: unknown key"),
    ("[t]\nlineage = mail\npath = {out}/a.pem\nformat = postfix\nmode = 0644\n",
     "[t] mode:"),
    ("[t]\nlineage = mail\npath = {out}/a.pem\nformat = postfix\nowner = a, b\n",
     "[t] owner:"),
    ("[t]\npath = {out}/a.pem\nformat = postfix\n", "[t]: say which lineage it takes"),
    ("[t]\nlineage = mail\npath = {out}/a.pem\ndirectory = {out}/d\n",
     "[t]: give exactly one of path = FILE or"),
    ("[t]\nlineage = mail\npath = {out}/a.pem\n", "[t] format: missing"),
    ("[t]\nlineage = mail\npath = out/a.pem\nformat = postfix\n", "[t] path:"),
    ("[t]\nlineage = mail\npath = {out}/a.pem\nformat = pdf\n", "[t] format:"),
    ("[t]\npreset = nosuch\nlineage = mail\npath = {out}/a.pem\n", "[t] preset:"),
    ("[t]\npreset = samba\nlineage = mail\npath = {out}/a.pem\nmode = 0400\n",
     "[t] mode: 0400: samba refuses any key mode but 0600"),
])
def test_a_config_error_is_exit_2_one_line_and_nothing_written(
        own_site: Path, capsys: pytest.CaptureFixture[str], section: str, message: str) -> None:
    path = conf(own_site, section.format(out=own_site / "out"))
    before = snapshot(own_site)
    code, _out, err = run(capsys, deploy_cli.main, "--config-dir", str(own_site / "le"),
                          "deploy", "--all")
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"certbot-atomic-deploy: {path}: "), err
    assert message in err[0]
    assert snapshot(own_site) == before


def test_material_that_fails_validation_is_exit_1_and_nothing_published(
        own_site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other, _ = make_chain(["mail.example.org"])
    (own_site / "le" / "archive" / "mail" / "privkey1.pem").write_bytes(pem_of(other))
    conf(own_site, f"[mail]\nlineage = mail\npath = {own_site}/out/mail.pem\nformat = postfix\n")
    code, _out, err = run(capsys, deploy_cli.main, "--config-dir", str(own_site / "le"),
                          "deploy", "--all")
    assert code == 1
    assert len(err) == 1 and "the key does not match the certificate" in err[0]
    assert list((own_site / "out").iterdir()) == []


def test_check_config_refuses_a_password_java_cannot_use(
        own_site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    password = write_password(own_site / "le" / "tomcat.pass", "pässword")
    conf(own_site, f"[java]\nlineage = mail\npath = {own_site}/out/k.p12\nformat = pkcs12\n"
               f"password_file = {password}\n")
    code, _out, err = run(capsys, deploy_cli.main, "--config-dir", str(own_site / "le"),
                          "check-config")
    assert code == 2 and len(err) == 1
    assert "other than printable ASCII, which Java cannot open" in err[0]


def test_every_preset_names_a_valid_key_mode_and_its_reason(tmp_path: Path) -> None:
    for name, preset in PRESETS.items():
        assert len(preset.why) > 20, name
        parse_mode(str(preset.values["mode"]), name)
        path = tmp_path / f"{name}.conf"
        password = f"password_file = {tmp_path}/p\n" if name == "tomcat" else ""
        # owner and group given, so presets whose group this machine lacks still load
        owner = f"owner = {0 if preset.root_owned else ME}\n"
        reader = f"reader = {pwd.getpwuid(ME).pw_name}\n" if "reader" in preset.values else ""
        path.write_text(f"[t]\npreset = {name}\nlineage = mail\npath = {tmp_path}/k\n"
                        f"{owner}group = {MY_GROUP}\n{password}{reader}")
        if preset.no_writable_dirs and any(
                os.stat(d).st_mode & stat.S_IWOTH for d in (*tmp_path.parents, tmp_path)):
            with pytest.raises(ConfigError, match=f"is world-writable .*{name} refuses"):
                load(str(path), str(tmp_path / "le"))
            continue
        target = load(str(path), str(tmp_path / "le")).targets[0]
        assert (target.preset, target.key.gid) == (name, MY_GROUP)


def test_an_unexpected_error_is_one_line_naming_where() -> None:
    def parse_the_thing() -> None:
        empty: dict[str, str] = {}
        empty["missing"]

    try:
        parse_the_thing()
    except KeyError as exc:
        line = describe_unexpected(exc)
    assert line.startswith("unexpected KeyError: 'missing' in parse_the_thing "
                           "(test_unit_cli.py:")
    assert "--debug" in line and "\n" not in line


# -- certbot-perms

def test_perms_refuses_a_mode_that_opens_the_key(capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run(capsys, perms_cli.main, "apply", "--key-mode", "0644", "mail")
    assert code == 2
    assert err == ["certbot-perms: --key-mode: 0644 gives other users access to the private key "
                   "(use 0640 and a group the daemon is in, or 0600)"]


def test_perms_apply_outside_certbot_needs_a_lineage(capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RENEWED_LINEAGE", raising=False)
    code, _out, err = run(capsys, perms_cli.main, "apply", "--key-mode", "0600")
    assert code == 2 and "$RENEWED_LINEAGE is not set" in err[0]


def test_perms_check_finds_a_readable_key_and_fix_closes_it(
        own_site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = own_site / "le" / "archive" / "mail" / "privkey1.pem"
    key.chmod(0o644)  # as certbot before 0.29 wrote keys
    code, out, _err = run(capsys, perms_cli.main, "check", "--json", "--config-dir",
                          str(own_site / "le"))
    assert code == 1
    found = json.loads(out)["findings"]
    assert any(f["path"] == str(key) and "other users" in f["problem"] for f in found), found
    code, _out, _err = run(capsys, perms_cli.main, "check", "--fix", "--config-dir",
                           str(own_site / "le"))
    assert stat.S_IMODE(key.stat().st_mode) & 0o077 == 0
    code, out, _err = run(capsys, perms_cli.main, "check", "--json", "--config-dir",
                          str(own_site / "le"))
    # (run as a plain user the key stays that user's, which check still reports: only
    # root could give it to root)
    assert not [f for f in json.loads(out)["findings"]
                if f["path"] == str(key) and "other users" in f["problem"]]


def test_perms_apply_gives_every_key_of_the_lineage_the_spec(
        own_site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key2, chain2 = make_chain(["mail.example.org"])
    write_lineage(own_site / "le", "mail", 2, pem_of(key2), chain2)
    code, out, err = run(capsys, perms_cli.main, "apply", "--key-owner", str(ME),
                         "--key-group", str(MY_GROUP), "--key-mode", "0640",
                         "--config-dir", str(own_site / "le"), "mail")
    assert code == 0, err
    for version in (1, 2):
        st = (own_site / "le" / "archive" / "mail" / f"privkey{version}.pem").stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, ME, MY_GROUP)
    assert "keys are" in out


COMMANDS = {"certbot-perms": perms_cli, "certbot-atomic-deploy": deploy_cli}


@pytest.mark.parametrize("prog", sorted(COMMANDS))
def test_both_commands_answer_version_and_exit_2_on_a_usage_error(
        prog: str, capsys: pytest.CaptureFixture[str]) -> None:
    main = COMMANDS[prog].main
    with pytest.raises(SystemExit) as version:
        main(["--version"])
    out = capsys.readouterr().out
    distribution = importlib.metadata.version("certbot-daemon-keys")
    assert version.value.code == 0 and out.strip() == f"{prog} {distribution}"
    command = "check" if prog == "certbot-perms" else "status"
    with pytest.raises(SystemExit) as usage:
        main([command, "--no-such-option"])
    assert usage.value.code == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


def test_config_dir_is_taken_before_or_after_the_command(
        own_site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    le = str(own_site / "le")
    conf(own_site, f"[mail]\nlineage = mail\npath = {own_site}/out/mail.pem\nformat = postfix\n")
    before = run(capsys, deploy_cli.main, "--config-dir", le, "check-config")
    after = run(capsys, deploy_cli.main, "check-config", "--config-dir", le)
    assert before[0] == 0 and before == after and f"{le}/atomic-deploy.conf" in before[1]
    # given in both places, the one after the command wins; given nowhere, the default
    code, _out, err = run(capsys, deploy_cli.main, "--config-dir", "/nonexistent",
                          "check-config", "--config-dir", le)
    assert (code, err) == (0, [])
    perms_before = run(capsys, perms_cli.main, "--config-dir", le, "check", "--json")
    perms_after = run(capsys, perms_cli.main, "check", "--json", "--config-dir", le)
    assert perms_before == perms_after
    assert json.loads(perms_before[1])["config_dir"] == le


def test_the_same_exit_code_table_in_both_commands(
        own_site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    le = str(own_site / "le")
    conf(own_site, f"[mail]\nlineage = mail\npath = {own_site}/out/mail.pem\nformat = postfix\n")
    # a name that is not there: usage (2), one line, in both
    code, _out, err = run(capsys, perms_cli.main, "apply", "--config-dir", le,
                          "--key-mode", "0600", "no-such-lineage")
    assert code == 2 and len(err) == 1 and "no such lineage" in err[0]
    code, _out, err = run(capsys, deploy_cli.main, "--config-dir", le, "rollback", "nope")
    assert code == 2 and len(err) == 1 and "no target [nope]" in err[0]
    # something that failed: 1, in both
    code, _out, err = run(capsys, deploy_cli.main, "--config-dir", le, "rollback", "mail")
    assert code == 1 and len(err) == 1 and "no earlier version is kept" in err[0]
    (own_site / "le" / "live" / "mail" / "privkey.pem").unlink()
    code, _out, err = run(capsys, perms_cli.main, "apply", "--config-dir", le,
                          "--key-mode", "0600", "mail")
    assert code == 1 and len(err) == 1 and "privkey.pem: missing" in err[0]


MAN = Path(__file__).resolve().parent.parent / "man"


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    found: set[str] = set()
    for action in parser._actions:
        found.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _option_strings(sub)
    return found


@pytest.mark.parametrize("prog", sorted(COMMANDS))
def test_the_man_page_names_every_option_and_no_other(prog: str) -> None:
    page = (MAN / f"{prog}.1").read_text()
    in_page = {m.replace("\\-", "-") for m in re.findall(r"\\fB(\\-[^\\ ]*(?:\\-[^\\ ]*)*)"
                                                           r"\\fR", page)}
    assert in_page == _option_strings(COMMANDS[prog].build_parser()), (
        "man/ is out of date: run scripts/manpages")
    distribution = importlib.metadata.version("certbot-daemon-keys")
    assert f'"certbot-daemon-keys {distribution}"' in page.splitlines()[0]
    # and the page renders with no warning, where man is installed
    if shutil.which("man"):
        shown = subprocess.run(["man", "--warnings", "-l", str(MAN / f"{prog}.1")],
                               capture_output=True, text=True,
                               env={"MANWIDTH": "80", "PATH": os.environ["PATH"]})
        assert shown.returncode == 0 and shown.stderr == "", shown.stderr
        assert "EXIT STATUS" in shown.stdout


PACKAGES = ("daemon_keys", "certbot_perms", "certbot_atomic_deploy")
# Who may import whom: the core imports neither face; each face imports the core, never
# the other; only the installer imports certbot.
MAY_IMPORT = {"daemon_keys": {"daemon_keys"},
              "certbot_perms": {"daemon_keys", "certbot_perms"},
              "certbot_atomic_deploy": {"daemon_keys", "certbot_atomic_deploy"}}


def _imports(path: Path) -> set[str]:
    """The top-level names of every module a source file imports, wherever in the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_the_packages_import_each_other_in_one_direction_only(package: str) -> None:
    root = Path(importlib.import_module(package).__file__ or "").parent
    ours = set(PACKAGES)
    for source in sorted(root.glob("*.py")):
        imported = _imports(source)
        assert imported & ours <= MAY_IMPORT[package], (source, imported & ours)
        if source.name != "installer.py":
            assert not imported & {"certbot", "acme", "josepy"}, source


def test_a_whole_deploy_imports_no_certbot(own_site: Path) -> None:
    conf(own_site, f"[mail]\nlineage = mail\npath = {own_site}/out/mail.pem\nformat = postfix\n")
    run = subprocess.run([sys.executable, "-X", "importtime", "-m", "certbot_atomic_deploy",
                          "--config-dir", str(own_site / "le"), "deploy", "--all"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "published" in run.stdout, run.stderr
    modules = {line.rsplit("|", 1)[1].strip() for line in run.stderr.splitlines()
               if line.startswith("import time:") and "|" in line}
    assert "cryptography.x509" in modules  # something was validated: the whole path ran
    assert not {m.split(".")[0] for m in modules} & {"certbot", "acme", "josepy",
                                                      "certbot_perms"}


def test_a_config_others_can_write_is_refused_before_anything_runs(
        own_site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = own_site / "ran"
    path = conf(own_site, f"[mail]\nlineage = mail\npath = {own_site}/out/mail.pem\n"
                          f"format = postfix\ncheck = touch {marker}\n")
    path.chmod(0o646)
    code, out, err = run(capsys, deploy_cli.main, "--config-dir", str(own_site / "le"),
                         "deploy", "--all")
    assert code == 2 and out == "" and len(err) == 1
    assert f"{path}: refused, writable by others (mode 0646)" in err[0]
    assert not marker.exists() and not (own_site / "out" / "mail.pem").exists()


def test_a_spec_record_that_is_not_a_file_is_one_line_saying_so(
        own_site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (own_site / "le" / "certbot-perms" / "mail.conf").mkdir(parents=True)
    code, _out, err = run(capsys, perms_cli.main, "--config-dir", str(own_site / "le"),
                         "apply", "mail")
    assert code == 2 and len(err) == 1
    assert err[0].endswith("certbot-perms/mail.conf: not a regular file (fix it, or rewrite "
                           "it with certbot-perms apply --key-group ...)")


@pytest.mark.parametrize("argv, message", [
    (["deploy", "--lineage", ""], "deploy --lineage '': not a lineage name"),
    (["deploy", "--lineage", "../etc"], "deploy --lineage '../etc': not a lineage name"),
    (["units", "--user", "no-such-user-cdk"],
     "units --user: user 'no-such-user-cdk' does not exist"),
    (["units", "--user", "root"], "units --user root: that is root"),
])
def test_a_command_that_would_do_nothing_says_why_and_exits_2(
        own_site: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
        message: str) -> None:
    conf(own_site, f"[mail]\nlineage = mail\npath = {own_site}/out/mail.pem\nformat = postfix\n")
    before = snapshot(own_site)
    code, _out, err = run(capsys, deploy_cli.main, "--config-dir", str(own_site / "le"), *argv)
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert snapshot(own_site) == before

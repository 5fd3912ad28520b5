"""certbot-atomic-deploy on the paths a new user falls into (issue 12): configs others can
change, targets over certbot's own files or each other, targets that several lineages
match, and the rough edges of the by-hand commands. Each runs the installed command.
"""
from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.figures import report
from tests.support.pki import make_chain, pem_of
from tests.support.procs import stop_process, wait_until
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
from tests.support.users import NOBODY, as_user

HOOKS = Path(__file__).parent.parent / "hooks"


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


# -- every check and reload eventually runs (issue 12, items 4, 5 and 9)

def _status(site: Path) -> dict[str, object]:
    result = deploy(site / "le", "status", "--json")
    rows = json.loads(result.stdout)
    assert len(rows) == 1
    return dict(rows[0], exit=result.returncode)


def test_a_failed_reload_stays_pending_and_the_next_run_retries_it(site: Path) -> None:
    log, ready = site / "reloads.log", site / "daemon-up"
    basic_conf(site, f"reload = test -e {ready} && echo run >> {log}")
    first = deploy(site / "le", "deploy", "--all")
    assert first.returncode == 1 and "reload 'test -e" in one_line(first)
    status = _status(site)
    assert (status["exit"], status["in_sync"], status["pending"]) == (1, False, "reload")
    assert "published, reload pending (since" in str(status["detail"])
    ready.touch()
    # The content is current, yet the reload it never had runs now, once.
    second = deploy(site / "le", "deploy", "--all")
    assert second.returncode == 0, second.stderr
    assert "unchanged" in second.stdout and f"reload ok: test -e {ready}" in second.stdout
    assert log.read_text() == "run\n"
    status = _status(site)
    assert (status["exit"], status["in_sync"], status["pending"]) == (0, True, None)
    assert deploy(site / "le", "deploy", "--all").returncode == 0
    assert log.read_text() == "run\n"  # nothing pending: no reload


def test_a_failed_check_rolls_back_every_file_of_that_daemon_not_half(site: Path) -> None:
    """A daemon fed by a key file and a certificate file (Samba's tls keyfile/certfile):
    the key's check fails, so the certificate goes back too (they share a reload) and
    the daemon never reloads onto a key of one version and a certificate of another.
    A target with another reload is not dragged along."""
    log, broken, out = site / "reloads.log", site / "broken", site / "out"
    reload = f"echo dc >> {log}"
    write_conf(site / "le", f"""\
[key]
lineage = mail
path = {out}/key.pem
format = key
check = test ! -e {broken}
reload = {reload}

[cert]
lineage = mail
path = {out}/cert.pem
format = fullchain
reload = {reload}

[web]
lineage = mail
path = {out}/web.pem
format = fullchain
reload = echo web >> {log}
""")
    first = deploy(site / "le", "deploy", "--all")
    assert first.returncode == 0, first.stderr
    assert log.read_text() == "dc\nweb\n"
    before = {name: (out / name).read_bytes() for name in ("key.pem", "cert.pem")}
    new_version(site)
    broken.touch()
    second = deploy(site / "le", "deploy", "--all")
    assert second.returncode == 1
    assert f"[cert] put back with [key] (same reload '{reload}'), whose check " \
           f"'test ! -e {broken}' failed" in second.stderr, second.stderr
    assert {name: (out / name).read_bytes() for name in before} == before
    assert log.read_text() == "dc\nweb\nweb\n"  # the web target moved on and reloaded
    assert (out / "web.pem").read_bytes() == lineage_bytes(site / "le", "mail")["fullchain"]
    statuses = {t["target"]: t for t in json.loads(deploy(site / "le", "status", "--json").stdout)}
    assert "rolled-back" in str(statuses["cert"]) and "rolled-back" in str(statuses["key"])


@pytest.mark.parametrize("signum, code, said", [
    (signal.SIGINT, 130, "interrupted"),  # Ctrl-C
    (signal.SIGTERM, 143, "terminated (SIGTERM)"),  # systemctl stop, a unit's timeout
])
def test_a_check_cut_short_by_a_signal_runs_again_and_rolls_back_if_it_fails(
        site: Path, signum: int, code: int, said: str) -> None:
    log, pid_file, escaped = site / "reloads.log", site / "check.pid", site / "escaped.pid"
    basic_conf(site, f"reload = echo run >> {log}")
    assert deploy(site / "le", "deploy", "--all").returncode == 0
    old = (site / "out" / "mail.pem").read_bytes()
    new_version(site)
    # The check also starts a process in a session of its own (setsid), out of its group.
    basic_conf(site, f"check = setsid sleep 1000 & echo $! > {escaped}; echo $$ > {pid_file}; "
                     f"exec sleep 60\nreload = echo run >> {log}")
    proc = subprocess.Popen([DEPLOY, "--config-dir", str(site / "le"), "deploy", "--all"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: all(f.exists() and f.read_text().strip() != ""
                               for f in (pid_file, escaped)), 30, "the check started")
        check_pid, escaped_pid = int(pid_file.read_text()), int(escaped.read_text())
        assert os.getsid(escaped_pid) != os.getsid(check_pid)  # it did leave the session
        proc.send_signal(signum)
        _out, err = proc.communicate(timeout=30)
    finally:
        stop_process(proc)
    assert proc.returncode == code and err.strip().count("\n") == 0, err
    assert said in err and "Traceback" not in err
    assert not Path(f"/proc/{check_pid}").exists()  # the check went with it
    assert not Path(f"/proc/{escaped_pid}").exists()  # and so did what it set loose
    assert (site / "out" / "mail.pem").read_bytes() != old  # v2, unchecked
    assert _status(site)["pending"] == "check"
    # The next run (now with a check that fails) runs the check, and rolls v2 back.
    basic_conf(site, f"check = false\nreload = echo run >> {log}")
    result = deploy(site / "le", "deploy", "--all")
    assert result.returncode == 1
    assert "of the publish an interrupted run left (mail v2) failed" in one_line(result)
    assert "put back mail v1" in one_line(result)
    assert (site / "out" / "mail.pem").read_bytes() == old
    assert log.read_text() == "run\n"  # only the first run's
    status = _status(site)
    assert (status["version"], status["pending"]) == (1, None)


def test_a_resumed_check_that_fails_puts_back_every_file_of_that_daemon(site: Path) -> None:
    """As above for a check an interrupted run left: the key's resumed check fails, so the
    certificate published with it (no check of its own, the same reload) goes back too."""
    log, out = site / "reloads.log", site / "out"
    reload = f"echo dc >> {log}"

    def conf(check: str) -> None:
        write_conf(site / "le", f"[key]\nlineage = mail\npath = {out}/key.pem\nformat = key\n"
                                f"check = {check}\nreload = {reload}\n\n"
                                f"[cert]\nlineage = mail\npath = {out}/cert.pem\n"
                                f"format = fullchain\nreload = {reload}\n")
    conf("true")
    assert deploy(site / "le", "deploy", "--all").returncode == 0
    before = {name: (out / name).read_bytes() for name in ("key.pem", "cert.pem")}
    new_version(site)
    conf("kill -INT $PPID; sleep 5")  # a Ctrl-C during the key's check
    assert deploy(site / "le", "deploy", "--all").returncode == 130
    assert {name: (out / name).read_bytes() for name in before} != before
    conf("false")
    result = deploy(site / "le", "reload-pending")
    assert result.returncode == 1
    assert "[cert] the publish an interrupted run left (mail v2) goes back with [key] (same " \
           f"reload '{reload}'), whose check 'false' failed; put back mail v1" in result.stderr
    assert {name: (out / name).read_bytes() for name in before} == before
    assert log.read_text() == "dc\n"  # the first run's only


def test_a_check_cut_short_runs_again_and_then_the_reload(site: Path) -> None:
    log = site / "reloads.log"
    basic_conf(site, f"check = kill -INT $PPID; sleep 5\nreload = echo run >> {log}")
    # The check interrupts the run that started it, like a Ctrl-C at that moment.
    assert deploy(site / "le", "deploy", "--all").returncode == 130
    assert not log.exists() and _status(site)["pending"] == "check"
    basic_conf(site, f"check = true\nreload = echo run >> {log}")
    result = deploy(site / "le", "reload-pending")
    assert result.returncode == 0, result.stderr
    assert log.read_text() == "run\n" and _status(site)["pending"] is None
    assert deploy(site / "le", "reload-pending").stdout.startswith("nothing pending")


def test_a_hanging_check_is_killed_with_everything_it_started(site: Path) -> None:
    # In its group; in a session of its own (setsid); orphaned by a subshell that exits
    # (double fork), which only a child subreaper gets back.
    files = [site / f"grandchild{i}.pid" for i in range(3)]
    basic_conf(site, f"timeout = 1\ncheck = sleep 60 & echo $! > {files[0]}; setsid sleep 60 "
                     f"& echo $! > {files[1]}; (setsid sleep 60 & echo $! > {files[2]}); wait")
    started = time.monotonic()
    result = deploy(site / "le", "deploy", "--all")
    took = time.monotonic() - started
    assert result.returncode == 1 and "timed out after 1 s" in one_line(result)
    assert took < 30
    procs = [Path(f"/proc/{int(pid_file.read_text())}") for pid_file in files]
    wait_until(lambda: not any(p.exists() for p in procs), 5, "every grandchild went")
    assert not (site / "out" / "mail.pem").exists()  # rolled back: there was none before
    # The lock was let go with the run: the next one does not wait for it.
    assert deploy(site / "le", "--lock-timeout", "0", "status").returncode == 1


def test_a_reload_printing_300_mb_is_not_held_in_memory(site: Path) -> None:
    basic_conf(site, "reload = head -c 300000000 /dev/zero | tr '\\0' x; exit 3")
    measure = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], "
               "capture_output=True, text=True); print(r.returncode); print(r.stderr, "
               "end=''); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    result = subprocess.run([sys.executable, "-c", measure, DEPLOY, "--config-dir",
                             str(site / "le"), "deploy", "--all"], capture_output=True,
                            text=True, timeout=120)
    lines = result.stdout.strip().splitlines()
    code, line, max_rss_kb = int(lines[0]), lines[1], int(lines[-1])
    report(f"a reload printing 300 MB: largest process {max_rss_kb / 1024:.0f} MiB")
    assert code == 1 and "reload 'head -c" in line and "failed: exit 3: xxx" in line
    assert len(line) < 1000
    assert max_rss_kb < 100 * 1024


def test_a_failing_check_is_told_by_its_first_error_line_bounded(site: Path) -> None:
    basic_conf(site, "check = echo 'Load smb config files' >&2; echo 'ERROR: the real cause' "
                     ">&2; echo 'Loaded services file OK.' >&2; exit 1")
    line = one_line(deploy(site / "le", "deploy", "--all"))
    assert "(exit 1: ERROR: the real cause)" in line
    basic_conf(site, "check = printf 'x%.0s' $(seq 5000) >&2; exit 1")
    assert len(one_line(deploy(site / "le", "deploy", "--all"))) < 600


@pytest.mark.parametrize("body", [
    "[]",
    '{"targets": []}',
    '{"targets": {"postfix": "yes"}}',
    '{"targets": {"postfix": {"current": {"seq": "one"}}}}',
    '{"targets": {"postfix": {"current": {"seq": 1, "lineage": "mail", "version": 1, '
    '"serial": "1", "not_after": "x", "names": [1], "published_at": "x"}}}}',
    '{"targets": {"postfix": {"current": null, "history": {}}}}',
    '{"targets": {"postfix": {"current": null, "pending": {"what": "coffee"}}}}',
])
def test_a_state_file_of_the_wrong_shape_is_one_line_not_a_traceback(site: Path,
                                                                     body: str) -> None:
    basic_conf(site)
    state = site / "le" / "atomic-deploy.state"
    state.mkdir(mode=0o700)
    (state / "state.json").write_text(body)
    for command in (["status"], ["deploy", "--all"], ["rollback", "postfix"],
                    ["reload-pending"]):
        result = deploy(site / "le", *command)
        line = one_line(result)
        assert result.returncode == 1 and "unreadable state" in line, (command, line)
        assert "unexpected" not in line
    assert not (site / "out" / "mail.pem").exists()
    assert (state / "state.json").read_text() == body  # never written over unread


def test_one_certbot_renew_of_many_lineages_reloads_once_with_the_post_hook(
        certbot: Certbot, open_tmp: Path) -> None:
    """Certbot runs a deploy hook per renewed lineage, and identical post-hooks once."""
    count = 20 if os.environ.get("CERTBOT_DAEMON_KEYS_SLOW") else 3
    out, log = open_tmp / "out", open_tmp / "commands.log"
    out.mkdir(mode=0o755)
    certbot.config_dir.mkdir(parents=True)
    names = [f"mail{i}" for i in range(count)]
    write_conf(certbot.config_dir, f"[defaults]\nformat = postfix\n"
                                   f"check = echo check {{lineage}} >> {log}\n"
                                   f"reload = echo reload >> {log}\n\n" + "".join(
        f"[{n}]\nlineage = {n}\npath = {out}/{n}.pem\n\n" for n in names))
    certbot.extra_env["PATH"] = f"{Path(DEPLOY).parent}:{os.environ['PATH']}"
    for n in names:
        certbot.certonly(n, [f"{n}.example.org"])
    reloads = {}
    # Deferred first: certbot saves a --deploy-hook in each renewal conf for good.
    for mode in ("hooks/*-deferred + hooks/*-reload-pending", "a deploy hook alone"):
        installed = [(certbot.config_dir / "renewal-hooks" / kind, script) for script, kind in (
            ("certbot-atomic-deploy-deferred", "deploy"),
            ("certbot-atomic-deploy-reload-pending", "post"))]
        if mode.startswith("hooks"):  # the scripts, where the README puts them
            for directory, script in installed:
                directory.mkdir(parents=True, exist_ok=True)
                shutil.copy(HOOKS / script, directory)
            hooks = []
        else:
            for directory, script in installed:
                (directory / script).unlink()
            hooks = ["--deploy-hook", "certbot-atomic-deploy"]
        log.unlink(missing_ok=True)
        certbot.renew("--force-renewal", *hooks)
        lines = log.read_text().splitlines()
        reloads[mode] = lines.count("reload")
        # every lineage was checked, and each reload came after every check
        assert sorted(x for x in lines if x.startswith("check")) == sorted(
            f"check {n}" for n in names)
        assert all(lineage_bytes(certbot.config_dir, n)["privkey"] in
                   (out / f"{n}.pem").read_bytes() for n in names)
    report(f"{count} lineages renewed by one certbot renew, one shared reload: "
           + "; ".join(f"{mode}: {n} reloads" for mode, n in reloads.items()))
    assert reloads == {"a deploy hook alone": count,
                       "hooks/*-deferred + hooks/*-reload-pending": 1}
    assert lines[-1] == "reload"
    status = json.loads(deploy(certbot.config_dir, "status", "--json").stdout)
    assert [r["pending"] for r in status] == [None] * count


# -- monitoring that needs no log reading

# A sample: a name, its labels (none for the run's own samples), a value.
_SAMPLE = re.compile(r'^(certbot_atomic_deploy_[a-z_]+)(?:\{((?:[a-z_]+="(?:[^"\\]|\\.)*",?)*)\})? '
                     r'(-?[0-9.e+]+)$')


def _metrics(path: Path) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The samples of a textfile, every line checked against the exposition format."""
    samples = {}
    for line in path.read_text().splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        match = _SAMPLE.match(line)
        assert match, line
        labels = frozenset(re.findall(r'([a-z_]+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        samples[(match.group(1), labels)] = float(match.group(3))
    return samples


def test_the_metrics_file_tells_expiry_failure_and_pending_reload(site: Path) -> None:
    textfiles = site / "node-exporter"
    textfiles.mkdir()
    prom = textfiles / "certbot-atomic-deploy.prom"
    flag = site / "reload-works"
    write_conf(site / "le", f"""\
[defaults]
metrics_file = {prom}

[postfix]
lineage = mail
path = {site}/out/mail.pem
format = postfix
reload = test -e {flag}

[broken]
lineage = mail
path = {site}/out/missing-dir/x.pem
format = cert
""")
    assert deploy(site / "le", "deploy", "--all").returncode == 1
    st = prom.stat()
    assert (mode_of(prom), st.st_uid) == (0o644, 0)
    samples = _metrics(prom)
    postfix, broken = frozenset({("target", "postfix")}), frozenset({("target", "broken")})
    end = subprocess.run(["openssl", "x509", "-noout", "-enddate", "-in",
                          str(site / "le" / "live" / "mail" / "cert.pem")],
                         capture_output=True, text=True, check=True).stdout
    not_after = datetime.datetime.strptime(end.strip().split("=", 1)[1].replace("  ", " "),
                                           "%b %d %H:%M:%S %Y %Z").replace(
        tzinfo=datetime.timezone.utc).timestamp()
    assert samples[("certbot_atomic_deploy_target_not_after_timestamp_seconds", postfix)] == \
        not_after
    assert samples[("certbot_atomic_deploy_target_pending",
                    postfix | {("what", "reload")})] == 1
    assert samples[("certbot_atomic_deploy_target_in_sync", postfix)] == 0
    assert samples[("certbot_atomic_deploy_target_last_result",
                    broken | {("result", "failed")})] == 1
    assert samples[("certbot_atomic_deploy_target_last_result",
                    postfix | {("result", "published")})] == 1
    assert b"PRIVATE KEY" not in prom.read_bytes()
    assert samples[("certbot_atomic_deploy_last_run_success", frozenset())] == 0
    # The reload works now: the next run runs it, and the file says so.
    flag.touch()
    (site / "out" / "missing-dir").mkdir()
    assert deploy(site / "le", "deploy", "--all").returncode == 0
    samples = _metrics(prom)
    assert samples[("certbot_atomic_deploy_last_run_success", frozenset())] == 1
    assert samples[("certbot_atomic_deploy_target_pending",
                    postfix | {("what", "reload")})] == 0
    assert samples[("certbot_atomic_deploy_target_in_sync", postfix)] == 1
    assert samples[("certbot_atomic_deploy_target_last_result",
                    broken | {("result", "published")})] == 1
    # status --prometheus prints the targets' samples as the file has them; the file adds
    # the run's own two (last_run_*), which only a run knows.
    printed = deploy(site / "le", "status", "--prometheus")
    run_lines = [line for line in prom.read_text().splitlines() if "_last_run_" in line]
    assert len(run_lines) == 6  # HELP, TYPE and a sample, each of the two
    assert printed.returncode == 0
    assert printed.stdout.splitlines() == [line for line in prom.read_text().splitlines()
                                           if line not in run_lines]
    assert temp_files(textfiles) == []


def test_a_metrics_file_over_certbots_files_is_refused(site: Path) -> None:
    basic_conf(site)
    conf = site / "le" / "atomic-deploy.conf"
    conf.write_text(f"[defaults]\nmetrics_file = {site}/le/archive/mail/privkey1.pem\n\n"
                    + conf.read_text())
    before = snapshot(site)
    result = deploy(site / "le", "deploy", "--all")
    assert result.returncode == 2 and "metrics_file" in one_line(result)
    assert "would write into certbot's config dir" in one_line(result)
    assert snapshot(site) == before


# -- rough edges of the by-hand commands

@pytest.mark.parametrize("parent, message", [
    ("missing", "directory does not exist"),
    ("0777", "writable by others (mode 0777)"),
])
def test_a_dry_run_refuses_what_the_real_run_refuses(site: Path, parent: str,
                                                     message: str) -> None:
    out = site / "out" / "sub"
    if parent == "0777":
        out.mkdir()
        out.chmod(0o777)
    write_conf(site / "le", f"[t]\nlineage = mail\npath = {out}/mail.pem\nformat = postfix\n")
    before = snapshot(site / "out")
    for args in (["--dry-run"], []):
        result = deploy(site / "le", "deploy", "--all", *args)
        assert result.returncode == 1 and message in one_line(result), (args, result.stdout)
        assert "planned" not in result.stdout
        if args:
            assert not (site / "le" / "atomic-deploy.state").exists()  # a dry run: no state
    assert snapshot(site / "out") == before


def test_a_dry_run_shows_each_files_mode_and_the_commands(site: Path) -> None:
    write_conf(site / "le", f"""\
[certs]
lineage = mail
path = {site}/out/fullchain.pem
format = fullchain
check = true
reload = echo reload

[key]
lineage = mail
path = {site}/out/key.pem
format = key
""")
    result = deploy(site / "le", "deploy", "--all", "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = {line.split("]")[0][1:]: line for line in result.stdout.splitlines()}
    assert "as root:root 0644, then check 'true', reload 'echo reload'" in lines["certs"]
    assert lines["key"].endswith("as root:root 0600")
    assert list((site / "out").iterdir()) == []


def test_status_of_a_target_never_deployed_says_so_without_none(site: Path) -> None:
    basic_conf(site)
    result = deploy(site / "le", "status")
    assert result.returncode == 1
    assert result.stdout.strip() == f"[postfix] {site}/out/mail.pem: never deployed"


def test_rollback_of_a_target_that_does_not_exist_is_a_usage_error(site: Path) -> None:
    basic_conf(site)
    result = deploy(site / "le", "rollback", "nosuch")
    assert result.returncode == 2 and "no target [nosuch] (targets: postfix)" in one_line(result)


def test_output_into_a_closed_pipe_is_not_reported_as_a_disk_error(site: Path) -> None:
    """'check-config | head': the reader goes away; nothing to complain about."""
    write_conf(site / "le", "".join(f"[t{i}]\nlineage = mail\npath = {site}/out/{i}.pem\n"
                                    f"format = postfix\n" for i in range(2000)))
    result = subprocess.run(f"{DEPLOY} --config-dir {site / 'le'} check-config | head -c 10",
                            shell=True, capture_output=True, text=True, timeout=120)
    assert len(result.stdout) == 10 and result.stderr == "", result.stderr


def test_a_user_who_may_not_look_is_told_so_not_no_such_lineage(site: Path,
                                                                outsider_python: str) -> None:
    basic_conf(site)
    (site / "le").chmod(0o755)
    (site / "le" / "atomic-deploy.conf").chmod(0o644)
    result = subprocess.run(
        [*as_user(NOBODY, NOBODY), DEPLOY, "--config-dir", str(site / "le"), "--config",
         str(site / "le" / "atomic-deploy.conf"), "deploy", "--lineage", "mail", "--dry-run"],
        capture_output=True, text=True, timeout=60)
    line = one_line(result)
    assert result.returncode == 1 and "Permission denied" in line and "no such" not in line


def test_a_rollback_puts_back_the_owner_group_and_mode_the_file_had(site: Path,
                                                                    group: str) -> None:
    """A daemon that read the old file through its group must still read it after a
    failed check put it back (it used to come back with the new spec's group)."""
    basic_conf(site, f"group = {group}\nmode = 0640")
    assert deploy(site / "le", "deploy", "--all").returncode == 0
    published = site / "out" / "mail.pem"
    before = (published.read_bytes(), published.stat().st_gid, mode_of(published))
    new_version(site)
    basic_conf(site, "group = root\nmode = 0600\ncheck = false")
    result = deploy(site / "le", "deploy", "--all")
    assert result.returncode == 1 and "restored the previous content" in one_line(result)
    assert (published.read_bytes(), published.stat().st_gid, mode_of(published)) == before

"""Exposure watch: while keys are published or renewed, an outsider never reads key bytes.

A watcher (tests/support/watcher.py) runs as uid 65534 with no groups, outside every
spec here, scanning the published files (and certbot's live/ and archive/) in a
tight loop and counting every read that returns private key bytes. It must
count zero. Deploys run in-process through the real Deployer, so a thousand of
them fit in well under a minute.
"""
from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from certbot_atomic_deploy.config import load
from certbot_atomic_deploy.deploy import Deployer
from tests.support import watcher
from tests.support.figures import report
from tests.support.pki import make_chain, pem_of
from tests.support.site import write_conf, write_lineage
from tests.support.testbed import Certbot
from tests.support.users import NOBODY, as_user

WATCHER = str(Path(watcher.__file__))


@contextmanager
def outsider_watching(python: str, roots: list[Path], stop: Path
                      ) -> Iterator[dict[str, Any]]:
    result: dict[str, Any] = {}
    proc = subprocess.Popen(
        [*as_user(NOBODY, NOBODY), python, WATCHER, "--stop", str(stop), *map(str, roots)],
        stdout=subprocess.PIPE, text=True)
    try:
        yield result
    finally:
        stop.touch()
        out, _ = proc.communicate(timeout=120)
        result.update(json.loads(out))


def test_no_outsider_read_during_many_deploys(site: Path, group: str,
                                              outsider_python: str) -> None:
    deploys = 1000
    conf = write_conf(site / "le", f"""\
[postfix]
lineage = mail
path = {site}/out/postfix/mail.pem
format = postfix

[haproxy]
lineage = mail
path = {site}/out/haproxy.pem
format = haproxy
group = {group}

[dir]
lineage = mail
directory = {site}/out/dir
group = {group}
keep = 1
""")
    (site / "out" / "postfix").mkdir(mode=0o755)
    versions = []
    for v in (2, 3):
        key, chain = make_chain(["mail.example.org"])
        versions.append((v, pem_of(key), chain))
    stop = site / "stop"
    with outsider_watching(outsider_python, [site / "out"], stop) as seen:
        for i in range(deploys):
            v, key_pem, chain = versions[i % 2]
            write_lineage(site / "le", "mail", v, key_pem, chain)  # switch live/ to v
            result = Deployer(load(str(conf), str(site / "le")), str(site / "le")).deploy(None)
            assert result.ok, [o.detail for o in result.outcomes]
    report(f"exposure watch, {deploys} deploys x 3 targets: {seen['scans']} scans, "
           f"{seen['opened']} files opened by the outsider, {seen['exposures']} key reads")
    assert seen["scans"] > deploys // 10 and seen["opened"] > 0  # the watcher really ran
    assert seen["exposures"] == 0, seen["examples"]


def test_no_outsider_read_while_certbot_renews_with_perms(certbot: Certbot, group: str,
                                                         outsider_python: str) -> None:
    certbot.run("run", "-a", "standalone", "-i", "perms", "--cert-name", "watched",
                "-d", "watched.example.org", "--perms-key-group", group)
    stop = certbot.root / "stop"
    renewals = 3
    roots = [certbot.config_dir / "live", certbot.config_dir / "archive", certbot.config_dir]
    with outsider_watching(outsider_python, roots, stop) as seen:
        for _ in range(renewals):
            certbot.renew("--force-renewal")
    report(f"exposure watch, {renewals} certbot renewals with -i perms: {seen['scans']} scans, "
           f"{seen['exposures']} key reads by an outsider")
    assert seen["scans"] > 10
    assert seen["exposures"] == 0, seen["examples"]

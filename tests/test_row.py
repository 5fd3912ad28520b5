"""One row's release as its users run it, end to end: the "done when" of a supported certbot.

On whatever certbot and libraries this row has: certbot starts with the suite
installed, lists the plugin, issues with ``-i perms`` and a group/mode, keeps them
across renewals, ``certbot-perms check`` finds nothing, and ``certbot-atomic-deploy``
as certbot's deploy hook publishes a Postfix bundle, a versioned directory and a
PKCS#12 keystore of every renewed version.
"""
from __future__ import annotations

import grp
import os
import subprocess
import sys
from pathlib import Path

import certbot as certbot_package
import cryptography
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12

from tests.support.figures import report
from tests.support.site import DEPLOY, lineage_bytes, mode_of, write_conf, write_password
from tests.support.testbed import Certbot, certbot_executable

PERMS = str(Path(sys.executable).parent / "certbot-perms")
PASSWORD = "row-test-password"


def test_this_rows_certbot_with_the_suite_as_its_users_run_it(
        certbot: Certbot, open_tmp: Path, group: str) -> None:
    version = subprocess.run([certbot_executable(), "--version"], capture_output=True,
                             text=True, timeout=60)
    assert version.returncode == 0, version.stderr
    assert certbot_package.__version__ in version.stdout + version.stderr
    plugins = certbot.run("plugins", "--text")
    assert "* perms" in plugins.stdout

    out = open_tmp / "out"
    out.mkdir(mode=0o755)
    password = write_password(open_tmp / "tomcat.pass", PASSWORD)
    certbot.config_dir.mkdir(parents=True, exist_ok=True)  # "plugins" made it
    write_conf(certbot.config_dir, f"""\
[postfix]
preset = postfix
lineage = row
path = {out}/postfix.pem
check =
reload =

[dir]
lineage = row
directory = {out}/versions
group = {group}

[java]
lineage = row
path = {out}/row.p12
format = pkcs12
password_file = {password}
""")
    certbot.extra_env["PATH"] = f"{Path(DEPLOY).parent}:{os.environ['PATH']}"
    certbot.run("run", "-a", "standalone", "-i", "perms", "--cert-name", "row",
                "-d", "row.example.org", "--perms-key-group", group, "--perms-key-mode", "0640",
                "--deploy-hook", "certbot-atomic-deploy")
    for _ in range(2):
        certbot.renew("--force-renewal")

    gid = grp.getgrnam(group).gr_gid
    keys = sorted(certbot.archive("row").glob("privkey*.pem"))
    assert len(keys) == 3
    for key in keys:
        st = key.stat()
        assert (st.st_uid, st.st_gid, mode_of(key)) == (0, gid, 0o640), key
    check = subprocess.run([PERMS, "check", "--config-dir", str(certbot.config_dir)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr

    now = lineage_bytes(certbot.config_dir, "row")
    assert (out / "postfix.pem").read_bytes() == now["privkey"] + now["fullchain"]
    assert mode_of(out / "postfix.pem") == 0o600
    assert os.readlink(out / "versions" / "current") == "v3"
    assert (out / "versions" / "current" / "privkey.pem").read_bytes() == now["privkey"]
    _key, leaf, _cas = pkcs12.load_key_and_certificates((out / "row.p12").read_bytes(),
                                                        PASSWORD.encode())
    assert leaf == x509.load_pem_x509_certificate(now["cert"])
    report(f"row: certbot {certbot_package.__version__}, cryptography "
           f"{cryptography.__version__}, Python {sys.version.split()[0]}: issued with -i perms, "
           "2 renewals, keys kept, postfix + directory + pkcs12 published by the hook")

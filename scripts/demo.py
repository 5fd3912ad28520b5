"""The demo behind ``scripts/demo``: everything against a local pebble, in a temp dir.

1. issue a certificate for two names with ``certbot run -a standalone -i perms``
   and a key group, show the key's owner, group and mode and who can read it;
2. deploy it with certbot-atomic-deploy: a Postfix single-file bundle and a
   versioned directory;
3. renew (``certbot renew --force-renewal``, no perms flags), show the key
   again, and the deploy hook's ``status``.

Nothing outside the temp dir is changed except a demo group, created for the
run and removed at its end. ``--keep`` leaves the temp dir for a look around.
"""
from __future__ import annotations

import argparse
import grp
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support.testbed import Certbot, Pebble
from tests.support.users import NOBODY, run_as

BIN = Path(sys.executable).parent
DEMO_GROUP = "cdk-demo"


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def show(cmd: list[str], env: dict[str, str] | None = None, check: bool = True) -> int:
    print("$ " + " ".join(cmd), flush=True)
    result = subprocess.run(cmd, env=env, text=True, capture_output=True)
    out = (result.stdout + result.stderr).rstrip()
    if out:
        print("  " + out.replace("\n", "\n  "), flush=True)
    if check and result.returncode != 0:
        raise SystemExit(f"demo: step failed with exit {result.returncode}: {' '.join(cmd)}")
    return result.returncode


def describe_keys(certbot: Certbot, name: str) -> None:
    for key in sorted(certbot.archive(name).glob("privkey*.pem")):
        st = key.lstat()
        print(f"  {key.relative_to(certbot.config_dir)}: owner {pwd.getpwuid(st.st_uid).pw_name}"
              f" group {grp.getgrgid(st.st_gid).gr_name} mode {stat.S_IMODE(st.st_mode):04o}")
    live_key = str(certbot.live(name) / "privkey.pem")
    for label, groups in ((f"nobody in group {DEMO_GROUP}", [DEMO_GROUP]),
                          ("nobody without it", None)):
        rc = run_as(NOBODY, NOBODY, groups, "head", "-c", "0", live_key).returncode
        print(f"  {label} reading live/{name}/privkey.pem: {'yes' if rc == 0 else 'denied'}")


def write_deploy_config(certbot: Certbot, out: Path) -> Path:
    conf = certbot.config_dir / "atomic-deploy.conf"
    conf.write_text(f"""\
# certbot-atomic-deploy targets for the demo lineage
[defaults]
keep = 2

[postfix]
lineage = demo
path = {out}/postfix/demo.pem
format = postfix
mode = 0600

[web]
lineage = demo
directory = {out}/web
group = {DEMO_GROUP}
mode = 0640
""")
    return conf


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="certbot-daemon-keys-demo-"))
    root.chmod(0o755)
    created_group = subprocess.run(["getent", "group", DEMO_GROUP],
                                   capture_output=True).returncode != 0
    if created_group:
        subprocess.run(["groupadd", "--system", DEMO_GROUP], check=True)
    pebble = Pebble.start(root / "pebble")
    try:
        certbot = Certbot(pebble=pebble, root=root / "certbot")
        certbot.root.mkdir(mode=0o755)
        out = root / "srv"
        for sub in ("postfix", "web"):
            (out / sub).mkdir(parents=True, mode=0o755)
        env = certbot.env()

        say("1. issue for mail.example.org and smtp.example.org, key readable by group "
            f"{DEMO_GROUP}")
        show(certbot.command("run", "-a", "standalone", "-i", "perms", "--cert-name", "demo",
                             "-d", "mail.example.org", "-d", "smtp.example.org",
                             "--perms-key-group", DEMO_GROUP, "--perms-key-mode", "0640"),
             env=env)
        describe_keys(certbot, "demo")

        deploy = [str(BIN / "certbot-atomic-deploy"), "--config-dir", str(certbot.config_dir)]
        conf = write_deploy_config(certbot, out)
        say(f"2. publish it atomically ({conf.name}: a Postfix bundle and a versioned dir)")
        show([*deploy, "check-config"])
        show([*deploy, "deploy", "--all"])

        say("3. renew with no perms flags; certbot runs the deploy hook")
        show(certbot.command("renew", "--force-renewal", "--deploy-hook",
                             str(BIN / "certbot-atomic-deploy")), env=env)
        describe_keys(certbot, "demo")
        show([*deploy, "status"])
        show(["ls", "-l", str(out / "postfix"), str(out / "web"), f"{out / 'web' / 'current'}/"])
        show(["openssl", "x509", "-noout", "-subject", "-enddate", "-in",
              str(out / "postfix" / "demo.pem")])
        show([str(BIN / "certbot-perms"), "check", "--config-dir", str(certbot.config_dir)])
        print(f"\ndemo done; files were under {root}"
              + ("" if args.keep else " (removed; --keep to look around)"))
    finally:
        pebble.stop()
        if created_group:
            subprocess.run(["groupdel", DEMO_GROUP], check=False)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())

"""Benchmark of a push to many hosts (issue 14): reported, never asserted.

Twenty private sshd "hosts" on 127.0.0.1 (each its own host key, authorized_keys,
receiver config, a postfix-format target and a reload), one hand-made lineage, and
in each round a new version of it pushed three ways, in this order, each timed from
the start of the command to its exit:

1. ``deploy --all`` to all 20 hosts, ``parallel = 8`` (and ``parallel = 20``);
2. each host alone (its own config and state): the slowest of the 20 is the
   baseline of the target "20 hosts at most 1.5x the slowest single host";
3. the loop people run today, one host after another: ``rsync -aL --chmod=F640`` of
   the key and the full chain into the host's directory, then ``ssh host reload``
   through a forced command that runs either (no validation, no rollback, files
   land one by one): target "ours faster".

Medians over ``--rounds`` rounds (3 by default). Also the bytes over the wire (lo's
receive counter in /proc/net/dev: run it on an otherwise quiet machine), the CPU of
the sender (the command and its ssh children: getrusage of waited children) and of
the whole machine (/proc/stat), since every "host" here shares this machine's cores:
the last column is the wall time against that CPU floor (the machine's CPU seconds
over its cores), what no schedule of these processes could beat here.

    python -m bench.fleet_bench            # about 2 minutes
    python -m bench.fleet_bench --hosts 10 --rounds 5
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from tests.support.site import DEPLOY, make_site, new_version
from tests.support.sshd import Sshd, keypair, privsep

HOST_KEY_OPTIONS = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                    "-o", "GlobalKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes"]
# The baseline's forced command: rsync's server side, or the reload, nothing else.
DISPATCH = """#!/bin/sh
case "$SSH_ORIGINAL_COMMAND" in
    "rsync --server"*) exec $SSH_ORIGINAL_COMMAND ;;
    reload) echo reloaded >> "$(dirname "$0")/reloads.log" ;;
    *) echo "refused: $SSH_ORIGINAL_COMMAND" >&2; exit 1 ;;
esac
"""


class Measure:
    """One command's wall time, the sender's CPU and the machine's, and lo's bytes."""

    def __init__(self, cmd: list[str] | None = None, shell: str | None = None) -> None:
        self.cmd, self.shell = cmd, shell

    def run(self) -> tuple[float, float, float, int]:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu0, lo0 = _machine_cpu(), _lo_bytes()
        start = time.perf_counter()
        if self.cmd is not None:
            done = subprocess.run(self.cmd, capture_output=True, text=True, timeout=600)
        else:
            done = subprocess.run(["sh", "-c", self.shell or ""], capture_output=True,
                                  text=True, timeout=600)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise SystemExit(f"failed ({done.returncode}): {self.cmd or self.shell}\n"
                             f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
        sender = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return wall, sender, _machine_cpu() - cpu0, _lo_bytes() - lo0


def _machine_cpu() -> float:
    """CPU seconds every core spent busy so far (/proc/stat: user..steal, not idle)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    busy = sum(int(v) for i, v in enumerate(fields[:8]) if i not in (3, 4))  # idle, iowait
    return busy / os.sysconf("SC_CLK_TCK")


def _lo_bytes() -> int:
    for line in Path("/proc/net/dev").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name.strip() == "lo":
            return int(rest.split()[0])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if shutil.which("rsync") is None:
        raise SystemExit("rsync is missing (apt-get install rsync): it is the baseline")
    root = Path(tempfile.mkdtemp(prefix="fleet-bench-", dir="/run"))  # sshd's StrictModes
    root.chmod(0o755)
    try:
        with ExitStack() as stack:
            return _bench(root, args.hosts, args.rounds, stack)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _bench(root: Path, n: int, rounds: int, stack: ExitStack) -> int:
    site = make_site(root / "site")
    config_dir = site / "le"
    ssh_dir = config_dir / "atomic-deploy.ssh"
    ssh_dir.mkdir(mode=0o700)
    identity = ssh_dir / "id_ed25519"
    ours = keypair(identity)
    theirs = keypair(root / "rsync_ed25519")
    stack.enter_context(privsep())
    servers = []
    for i in range(n):
        host = root / f"r{i}"
        (host / "out").mkdir(parents=True, mode=0o755)
        (host / "rsync").mkdir(mode=0o755)
        conf = host / "receive.conf"
        conf.write_text(f"[mail]\nlineage = mail\npath = {host}/out/mail.pem\nformat = postfix\n"
                        f"reload = echo reloaded >> {host}/reloads.log\n")
        dispatch = host / "dispatch"
        dispatch.write_text(DISPATCH)
        dispatch.chmod(0o755)
        server = Sshd(root / f"h{i}",
                      f'restrict,command="{DEPLOY} --config {conf} receive" {ours}\n'
                      f'restrict,command="{dispatch}" {theirs}\n')
        server.start()
        stack.callback(server.stop)
        servers.append(server)
    known = ssh_dir / "known_hosts"
    known.write_text("".join(s.host.known_hosts_line() + "\n" for s in servers))

    def conf_for(name: str, indexes: range | list[int], parallel: int) -> Path:
        path = root / f"{name}.conf"
        path.write_text(f"[defaults]\nparallel = {parallel}\n" + "".join(
            f"[h{i}]\nlineage = mail\nhost = 127.0.0.1:{servers[i].host.port}\n"
            f"identity = {identity}\nknown_hosts = {known}\n" for i in indexes))
        return path

    def deploy(conf: Path) -> Measure:
        return Measure([DEPLOY, "--config", str(conf), "--config-dir", str(config_dir),
                        "deploy", "--all"])

    all8, all20 = conf_for("all8", range(n), 8), conf_for("all20", range(n), 20)
    singles = [conf_for(f"one{i}", [i], 1) for i in range(n)]
    live = config_dir / "live" / "mail"
    ssh = (f"ssh -i {root}/rsync_ed25519 {' '.join(HOST_KEY_OPTIONS)} "
           f"-o UserKnownHostsFile={known}")
    loop = "; ".join(
        f"rsync -aL --chmod=F640 -e '{ssh} -p {s.host.port}' {live}/privkey.pem "
        f"{live}/fullchain.pem root@127.0.0.1:{root}/r{i}/rsync/ && "
        f"{ssh} -p {s.host.port} root@127.0.0.1 reload"
        for i, s in enumerate(servers)) + "; true"
    # Every host holds version 1 first: each measured push is a renewal's.
    deploy(all8).run()
    version = 1
    figures: dict[str, list[tuple[float, float, float, int]]] = {}
    singles_worst: list[float] = []
    for _ in range(rounds):
        for name, measure in (("parallel 8", deploy(all8)), ("parallel 20", deploy(all20))):
            version += 1
            new_version(site, version)
            figures.setdefault(name, []).append(measure.run())
        version += 1
        new_version(site, version)
        alone = [deploy(c).run() for c in singles]
        singles_worst.append(max(a[0] for a in alone))
        figures.setdefault("one host", []).extend(alone)
        figures.setdefault("rsync loop", []).append(Measure(shell=loop).run())
    worst = statistics.median(singles_worst)
    rsync = statistics.median(f[0] for f in figures["rsync loop"])
    cores = os.cpu_count() or 1
    print(f"| {n} hosts, {cores} cores, medians of {rounds} rounds | wall | vs slowest "
          "single host | vs rsync loop | bytes on lo | CPU sender | CPU machine | vs CPU "
          "floor |")
    print("|---|---|---|---|---|---|---|---|")
    for name in ("parallel 8", "parallel 20", "one host", "rsync loop"):
        rows = figures[name]
        wall = statistics.median(r[0] for r in rows)
        sender = statistics.median(r[1] for r in rows)
        machine = statistics.median(r[2] for r in rows)
        wire = statistics.median(r[3] for r in rows)
        label = {"one host": "one host alone (median of all)",
                 "rsync loop": "rsync + ssh reload, sequential"}.get(name, f"push, {name}")
        # Every "host" shares these cores: no schedule can beat the machine's CPU
        # seconds spread over them.
        floor = max(machine / cores, sender)
        print(f"| {label} | {wall:.2f} s | {wall / worst:.2f}x | {wall / rsync:.2f}x | "
              f"{wire / 1024:.0f} KiB | {sender:.2f} s | {machine:.2f} s | "
              f"{wall / floor:.2f}x |")
    print(f"| slowest single host (median over rounds) | {worst:.2f} s | 1.00x | "
          f"{worst / rsync:.2f}x | | | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

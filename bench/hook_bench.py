"""Benchmarks of the hook and the audit, reported (never asserted), each beside its target.

Medians over repeated runs; every ratio is taken against a baseline measured in
the same run, on the same machine, with the same interpreter.

1. deploy one lineage to five targets (postfix, haproxy, key, fullchain files and
   a versioned directory), wall time against the floor of
   ``python -c "import cryptography.x509"`` (target: at most 1.3x), beside a plain
   shell baseline doing cat/chown/chmod/mv for the same files; peak memory
   (target: at most 40 MiB);
2. the hook when nothing changed (target: at most 60 ms; cryptography not imported);
   and, for targets without ``tlsa =``, the hook (nothing changed; publishing) of this
   tree against the tree before the DANE gate (``git archive``), in turn each round
   (target: unchanged; dnspython not imported);
3. system calls per published file target, counted by ``strace -c`` (target: at
   most 2 fsyncs and 1 rename), and publish time against a bare
   write/fsync/rename/fsync floor (target: within 2x);
4. ``certbot-perms check`` over 10,000 and 20,000 synthetic lineages (targets:
   at most 1 s, and 20,000 at most 2.2x 10,000);
5. ``certbot renew --force-renewal`` against pebble with and without ``-i perms``
   (target: at most 5% overhead);
6. ``deploy --all`` with 1,000 and 10,000 certbot-shaped lineages, one ``postfix``
   file target each, all in one destination directory (a hosting box's HAProxy
   ``crt`` directory): the time per target at 10,000 against the time per target
   at 1,000, publishing everything and with nothing changed (target: at most
   1.2x; publishing is also shown above the filesystem's own floor, a bare
   create/write/fsync/rename/fsync-dir into the same directory, whose cost per
   file grows with the directory), one lineage renewed among them (the hook's
   case), and the ``getdents64`` calls of a run (each directory listed once).

    python -m bench.hook_bench            # everything (about 4 minutes)
    python -m bench.hook_bench --skip-renew
    python -m bench.hook_bench --only deploy,unchanged
    python -m bench.hook_bench --only shared      # about 2 minutes
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.pki import make_chain, pem_of
from tests.support.site import write_lineage

BIN = Path(sys.executable).parent
DEPLOY = str(BIN / "certbot-atomic-deploy")
PERMS = str(BIN / "certbot-perms")
ROWS: list[tuple[str, str, str, str]] = []


def row(what: str, figure: str, target: str, verdict: bool | None) -> None:
    mark = "" if verdict is None else ("met" if verdict else "NOT met")
    ROWS.append((what, figure, target, mark))
    print(f"  {what}: {figure} (target {target}) {mark}", file=sys.stderr, flush=True)


def _run_once(cmd: list[str], env: dict[str, str] | None,
              before: list[str] | None) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one run of ``cmd`` (``before`` untimed)."""
    if before:
        subprocess.run(before, check=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"benchmark step failed ({code}): {' '.join(cmd)}")
    return wall, usage.ru_maxrss


def timed(cmd: list[str], runs: int, env: dict[str, str] | None = None,
          before: list[str] | None = None) -> tuple[float, int]:
    """Median wall seconds and the largest peak RSS (KiB) over ``runs`` runs."""
    return interleaved({"cmd": (cmd, env, before)}, runs)["cmd"]


def interleaved(cmds: dict[str, tuple[list[str], dict[str, str] | None, list[str] | None]],
                runs: int) -> dict[str, tuple[float, int]]:
    """Like :func:`timed` for several commands, run in turn each round, so a machine that
    speeds up or slows down during the benchmark moves every median alike."""
    walls: dict[str, list[float]] = {name: [] for name in cmds}
    peaks = dict.fromkeys(cmds, 0)
    for _ in range(runs):
        for name, (cmd, env, before) in cmds.items():
            wall, peak = _run_once(cmd, env, before)
            walls[name].append(wall)
            peaks[name] = max(peaks[name], peak)
    return {name: (statistics.median(walls[name]), peaks[name]) for name in cmds}


def make_site(root: Path) -> Path:
    config = root / "le"
    key, chain = make_chain(["mail.example.org"])
    write_lineage(config, "mail", 1, pem_of(key), chain)
    out = root / "out"
    out.mkdir(mode=0o755)
    (config / "atomic-deploy.conf").write_text(f"""\
[defaults]
lineage = mail
keep = 1

[postfix]
path = {out}/postfix.pem
format = postfix

[haproxy]
path = {out}/haproxy.pem
format = haproxy

[key]
path = {out}/key.pem
format = key

[fullchain]
path = {out}/fullchain.pem
format = fullchain

[dir]
directory = {out}/dir
""")
    return config


def flip_script(config: Path) -> list[str]:
    """A command that moves lineage 'mail' to the other of two versions."""
    return [sys.executable, "-c", f"""
import os
live = {str(config / 'live' / 'mail')!r}
for kind in ('privkey', 'cert', 'chain', 'fullchain'):
    link = os.path.join(live, kind + '.pem')
    target = os.readlink(link)
    other = target.replace('1.pem', '@').replace('2.pem', '1.pem').replace('@', '2.pem')
    os.symlink(other, link + '.new')
    os.rename(link + '.new', link)
"""]


def bench_deploy(root: Path, runs: int) -> None:
    config = make_site(root)
    key, chain = make_chain(["mail.example.org"])
    write_lineage(config, "mail", 2, pem_of(key), chain)
    # As certbot runs it: no arguments, the renewed lineage in the environment. Beside
    # it, the floor, and what loading a key costs on top of it: cryptography's
    # serialization package (which imports its ssh module, dataclasses, inspect and
    # the ciphers).
    env = dict(os.environ, RENEWED_LINEAGE=str(config / "live" / "mail"))
    medians = interleaved({
        "floor": ([sys.executable, "-c", "import cryptography.x509"], None, None),
        "key floor": ([sys.executable, "-c", "import cryptography.x509, "
                       "cryptography.hazmat.primitives.serialization"], None, None),
        "deploy": ([DEPLOY], env, flip_script(config))}, runs)
    (floor, _), (key_floor, _), (deploy, peak) = (
        medians["floor"], medians["key floor"], medians["deploy"])
    row("deploy 1 lineage to 5 targets, median wall", f"{deploy * 1000:.0f} ms = "
        f"{deploy / floor:.2f}x the cryptography import floor ({floor * 1000:.0f} ms)",
        "<= 1.3x", deploy / floor <= 1.3)
    row("  the import floor of loading a key (x509 + serialization)",
        f"{key_floor * 1000:.0f} ms = {key_floor / floor:.2f}x the x509 floor; our deploy is "
        f"{deploy / key_floor:.2f}x this", "reference", None)
    row("deploy 1 lineage to 5 targets, peak memory", f"{peak / 1024:.1f} MiB",
        "<= 40 MiB", peak / 1024 <= 40)
    live = config / "live" / "mail"
    out = root / "shell"
    out.mkdir()
    (out / "dir").mkdir()
    script = "set -e; " + "; ".join(
        f"cat {srcs} > {out}/{dst}.tmp && chown root:root {out}/{dst}.tmp && "
        f"chmod {mode} {out}/{dst}.tmp && mv {out}/{dst}.tmp {out}/{dst}"
        for srcs, dst, mode in [
            (f"{live}/privkey.pem {live}/fullchain.pem", "postfix.pem", "600"),
            (f"{live}/fullchain.pem {live}/privkey.pem", "haproxy.pem", "600"),
            (f"{live}/privkey.pem", "key.pem", "600"),
            (f"{live}/fullchain.pem", "fullchain.pem", "644"),
            (f"{live}/privkey.pem", "dir/privkey.pem", "600"),
            (f"{live}/cert.pem", "dir/cert.pem", "644"),
            (f"{live}/chain.pem", "dir/chain.pem", "644"),
            (f"{live}/fullchain.pem", "dir/fullchain.pem", "644"),
            (f"{live}/privkey.pem {live}/fullchain.pem", "dir/combined.pem", "600")])
    shell, _ = timed(["/bin/sh", "-c", script], runs)
    row("plain shell cat/chown/chmod/mv for the same 9 files", f"{shell * 1000:.0f} ms "
        f"(our deploy is {deploy / shell:.1f}x, and validates, fsyncs, keeps versions)",
        "reference", None)


def bench_unchanged(root: Path, runs: int) -> None:
    config = make_site(root)
    subprocess.run([DEPLOY, "--config-dir", str(config), "deploy", "--all"], check=True,
                   stdout=subprocess.DEVNULL)
    env = dict(os.environ, RENEWED_LINEAGE=str(config / "live" / "mail"))
    bare, _ = timed([sys.executable, "-c", "pass"], runs)
    wall, _ = timed([DEPLOY], runs, env=env)
    imports = subprocess.run([sys.executable, "-X", "importtime", DEPLOY], env=env,
                             capture_output=True, text=True).stderr
    crypto = "cryptography" in imports
    row("hook with nothing changed (5 targets), median wall",
        f"{wall * 1000:.0f} ms (bare python {bare * 1000:.0f} ms); cryptography imported: "
        f"{'yes' if crypto else 'no'}", "<= 60 ms, no cryptography",
        wall <= 0.060 and not crypto)


# The last commit before the DANE gate (issue 15): what "unchanged" is measured against.
BEFORE_DANE = "22c1b07"


def _tree(rev: str, where: Path) -> Path:
    """The packages as they were at ``rev`` (git archive), byte-compiled like ours."""
    where.mkdir()
    top = Path(__file__).resolve().parent.parent
    archive = subprocess.run(["git", "-C", str(top), "archive", rev, "daemon_keys",
                              "certbot_perms", "certbot_atomic_deploy"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(where)], check=True,
                   stdout=subprocess.DEVNULL)
    return where


def bench_dane(root: Path, runs: int, baseline: str = BEFORE_DANE) -> None:
    """The hook for targets without ``tlsa =``, this tree against the tree before the DANE
    gate, both run as ``python -m certbot_atomic_deploy`` from their own sources, in turn
    each round: no change (5 targets), and a publish to the same 5 targets."""
    config = make_site(root)
    new_key, new_chain = make_chain(["mail.example.org"])
    write_lineage(config, "mail", 2, pem_of(new_key), new_chain)
    top = Path(__file__).resolve().parent.parent
    trees = {"before": _tree(baseline, root / "before"), "now": top}
    env = {name: dict(os.environ, RENEWED_LINEAGE=str(config / "live" / "mail"),
                      PYTHONPATH=str(tree)) for name, tree in trees.items()}
    hook = [sys.executable, "-m", "certbot_atomic_deploy"]
    subprocess.run(hook, env=env["now"], check=True, stdout=subprocess.DEVNULL)
    idle = interleaved({name: (hook, env[name], None) for name in trees}, runs)
    deploy = [*hook, "--config-dir", str(config), "deploy", "--all"]
    busy = interleaved({name: (deploy, env[name], flip_script(config)) for name in trees}, runs)
    imports = subprocess.run([sys.executable, "-X", "importtime", *hook[1:]], env=env["now"],
                             capture_output=True, text=True).stderr
    # The same config with a DANE gate on one target: nothing changed, so no DNS asked
    # and dnspython not imported either.
    conf = config / "atomic-deploy.conf"
    conf.write_text(conf.read_text().replace(
        "format = postfix\n", "format = postfix\ntlsa = _25._tcp.mail.example.org\n"
        "dns_server = 127.0.0.1:9\n", 1))
    gated = subprocess.run([sys.executable, "-X", "importtime", *hook[1:]], env=env["now"],
                           capture_output=True, text=True)
    if gated.returncode != 0:
        raise SystemExit(f"the hook with a tlsa = target failed: {gated.stderr[-500:]}")
    for what, figures in (("no change", idle), ("publishing", busy)):
        before, now = figures["before"][0], figures["now"][0]
        since = " (before the DANE gate)" if baseline == BEFORE_DANE else ""
        row(f"hook without tlsa =, 5 targets, {what}: this tree vs {baseline}{since}, "
            "median wall",
            f"{now * 1000:.1f} ms vs {before * 1000:.1f} ms = {now / before:.2f}x"
            + ("; dnspython imported: " + ("yes" if " dns" in imports else "no")
               + ", and with a tlsa = target, nothing changed: "
               + ("yes" if " dns" in gated.stderr else "no") if what == "no change" else ""),
            "unchanged (within the run-to-run spread, about 5%)",
            now / before <= 1.05)


def bench_syscalls(root: Path, runs: int) -> None:
    config = root / "le"
    key, chain = make_chain(["mail.example.org"])
    write_lineage(config, "mail", 1, pem_of(key), chain)
    out = root / "out"
    out.mkdir(mode=0o755)
    (config / "atomic-deploy.conf").write_text(
        f"[postfix]\nlineage = mail\npath = {out}/postfix.pem\nformat = postfix\n")
    key, chain = make_chain(["m.org"])
    write_lineage(config, "mail", 2, pem_of(key), chain)
    subprocess.run([DEPLOY, "--config-dir", str(config), "deploy", "--all"], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(flip_script(config), check=True)
    trace = subprocess.run(["strace", "-c", "-e", "trace=fsync,fdatasync,rename,renameat,"
                            "renameat2", "-o", str(root / "strace.txt"), DEPLOY,
                            "--config-dir", str(config), "deploy", "--all"],
                           capture_output=True, text=True)
    if trace.returncode != 0:
        raise SystemExit(trace.stderr)
    counts = {m.group(2): int(m.group(1)) for m in re.finditer(
        r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$",
        (root / "strace.txt").read_text(), re.M)}
    fsyncs = counts.get("fsync", 0) + counts.get("fdatasync", 0)
    renames = sum(counts.get(n, 0) for n in ("rename", "renameat", "renameat2"))
    # The run also records its state (a JSON file and the kept copy): 2 more files.
    row("one file target published: fsyncs / renames (whole run)",
        f"{fsyncs} / {renames} in all; the target itself 2 / 1, the state record "
        f"{fsyncs - 2} / {renames - 1}", "<= 2 fsyncs and 1 rename per target",
        fsyncs - 2 <= 4 and renames - 1 <= 2)
    from certbot_atomic_deploy.config import FileOutput, load
    from certbot_atomic_deploy.publish import NewFile, publish_file
    from daemon_keys.fs import Leftovers
    target = load(str(config / "atomic-deploy.conf"), str(config)).targets[0]
    assert isinstance(target.output, FileOutput)
    data = (out / "postfix.pem").read_bytes()
    ours, floor = [], []
    for i in range(runs * 5):
        new = NewFile(data + (b"\n" if i % 2 else b""), target.key.uid, target.key.gid,
                      target.mode_of(target.output.format))
        t0 = time.perf_counter()
        publish_file(target.output.path, new, Leftovers())
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        _bare_replace(out / "floor.pem", data)
        floor.append(time.perf_counter() - t0)
    o, f = statistics.median(ours), statistics.median(floor)
    row("publish one file target, median", f"{o * 1e6:.0f} us = {o / f:.2f}x a bare "
        f"open/write/fsync/rename/fsync-dir ({f * 1e6:.0f} us)", "<= 2x", o / f <= 2)


def _bare_replace(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, data)
    os.fsync(fd)
    os.close(fd)
    os.rename(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(dfd)
    os.close(dfd)


def synthetic_config(root: Path, lineages: int) -> Path:
    config = root / f"le-{lineages}"
    for sub in ("live", "archive", "renewal", "accounts"):
        (config / sub).mkdir(parents=True, mode=0o700 if sub != "renewal" else 0o755)
    key = b"-----BEGIN PRIVATE KEY-----\nMIG...\n-----END PRIVATE KEY-----\n"
    for i in range(lineages):
        name = f"host{i}.example.org"
        archive = config / "archive" / name
        live = config / "live" / name
        archive.mkdir(mode=0o755)
        live.mkdir(mode=0o755)
        for kind in ("privkey", "cert", "chain", "fullchain"):
            f = archive / f"{kind}1.pem"
            f.write_bytes(key if kind == "privkey" else b"cert")
            f.chmod(0o600 if kind == "privkey" else 0o644)
            (live / f"{kind}.pem").symlink_to(f"../../archive/{name}/{kind}1.pem")
        (config / "renewal" / f"{name}.conf").write_text(
            f"version = 5.8.0\narchive_dir = {archive}\n[renewalparams]\n"
            "authenticator = standalone\n")
    return config


def bench_check(root: Path, runs: int) -> None:
    times = {}
    for n in (10_000, 20_000):
        config = synthetic_config(root, n)
        times[n], _ = timed([PERMS, "check", "--config-dir", str(config)], runs)
    row("certbot-perms check, 10,000 lineages, median", f"{times[10_000]:.2f} s", "<= 1 s",
        times[10_000] <= 1.0)
    ratio = times[20_000] / times[10_000]
    row("certbot-perms check, 20,000 lineages", f"{times[20_000]:.2f} s = {ratio:.2f}x",
        "<= 2.2x", ratio <= 2.2)


def shared_dir_site(root: Path, lineages: int) -> tuple[Path, Path]:
    """``lineages`` lineages sharing one key and chain, each with a postfix target in OUT."""
    config = root / f"le-{lineages}"
    out = root / f"out-{lineages}"
    out.mkdir(mode=0o755)
    key, chain = make_chain(["shared.example.org"])
    key_pem = pem_of(key)
    sections = []
    for i in range(lineages):
        name = f"host{i}"
        write_lineage(config, name, 1, key_pem, chain)
        sections.append(f"[t{i}]\nlineage = {name}\npath = {out}/{name}.pem\n")
    (config / "atomic-deploy.conf").write_text(
        "[defaults]\nformat = postfix\nkeep = 1\n\n" + "\n".join(sections))
    return config, out


def _getdents(cmd: list[str], root: Path) -> int:
    """The getdents64 calls of one run of ``cmd``, counted by strace."""
    if not shutil.which("strace"):
        return -1
    log = root / "getdents.txt"
    subprocess.run(["strace", "-f", "-c", "-e", "trace=getdents64", "-o", str(log), *cmd],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    found = re.search(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?getdents64$",
                      log.read_text(), re.M)
    return int(found.group(1)) if found else 0


def _bare_publish_all(out: Path, n: int, data: bytes) -> float:
    """The floor of publishing ``n`` files into one directory: create, write, fsync, rename,
    fsync the directory, per file, in this process; seconds for all of them."""
    dfd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        t0 = time.perf_counter()
        for i in range(n):
            fd = os.open(f".f{i}.tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dfd)
            os.write(fd, data)
            os.fsync(fd)
            os.close(fd)
            os.rename(f".f{i}.tmp", f"f{i}.pem", src_dir_fd=dfd, dst_dir_fd=dfd)
            os.fsync(dfd)
        return time.perf_counter() - t0
    finally:
        os.close(dfd)


def bench_shared(root: Path, runs: int) -> None:
    per_target: dict[str, dict[int, float]] = {"publish": {}, "unchanged": {}, "floor": {}}
    sizes = (1_000, 10_000)
    dents = {}
    one: dict[int, float] = {}  # one lineage renewed: the hook's case
    for n in sizes:
        config, out = shared_dir_site(root, n)
        data = (config / "live" / "host0" / "fullchain.pem").read_bytes() * 2
        floors = []
        for _ in range(runs):
            floors.append(_bare_publish_all(out, n, data))
            subprocess.run(["find", str(out), "-mindepth", "1", "-delete"], check=True)
        per_target["floor"][n] = statistics.median(floors) / n
        cmd = [DEPLOY, "--config-dir", str(config), "deploy", "--all"]
        clear = ["find", str(out), "-mindepth", "1", "-delete"]  # untimed: all to publish
        publish, _ = timed(cmd, runs, before=clear)
        unchanged, _ = timed(cmd, runs)
        one[n], _ = timed([DEPLOY, "--config-dir", str(config), "deploy", "--lineage", "host5"],
                          runs, before=["rm", "-f", str(out / "host5.pem")])
        per_target["publish"][n] = publish / n
        per_target["unchanged"][n] = unchanged / n
        subprocess.run(clear, check=True)
        dents[n] = _getdents(cmd, root)
        shutil.rmtree(config)
        shutil.rmtree(out)
    for kind, label in (("publish", "publishing every target"),
                        ("unchanged", "nothing changed")):
        small, large = (per_target[kind][n] for n in sizes)
        row(f"deploy --all, one shared directory, {label}: per target, median",
            f"{small * 1e3:.2f} ms at 1,000, {large * 1e3:.2f} ms at 10,000 = "
            f"{large / small:.2f}x", "<= 1.2x", large / small <= 1.2)
    small, large = (per_target["floor"][n] for n in sizes)
    row("the filesystem's floor: a bare create/write/fsync/rename/fsync-dir per file into one "
        "directory, per file, median", f"{small * 1e3:.2f} ms at 1,000, {large * 1e3:.2f} ms "
        f"at 10,000 = {large / small:.2f}x", "(the directory's own growth)", None)
    ours = {n: per_target["publish"][n] - per_target["floor"][n] for n in sizes}
    row("deploy --all publishing, per target above that floor",
        f"{ours[1_000] * 1e3:.2f} ms at 1,000, {ours[10_000] * 1e3:.2f} ms at 10,000 = "
        f"{ours[10_000] / ours[1_000]:.2f}x", "<= 1.2x", ours[10_000] / ours[1_000] <= 1.2)
    row("one lineage of N renewed (deploy --lineage, one target to publish), median",
        f"{one[1_000] * 1e3:.0f} ms with 1,000 targets configured, {one[10_000] * 1e3:.0f} ms "
        f"with 10,000 (reading the config and state: linear in their size)", "", None)
    row("deploy --all, one shared directory: getdents64 calls of a publishing run",
        f"{dents[1_000]} at 1,000 targets, {dents[10_000]} at 10,000",
        "the directory listed once", None)


def bench_renew(root: Path, runs: int) -> None:
    from tests.support.testbed import Certbot, Pebble
    pebble = Pebble.start(root / "pebble")
    try:
        plain = Certbot(pebble=pebble, root=root / "plain")
        perms = Certbot(pebble=pebble, root=root / "perms")
        plain.certonly("r", ["renew.example.org"])
        perms.run("run", "-a", "standalone", "-i", "perms", "--cert-name", "r",
                  "-d", "renew.example.org", "--perms-key-group", "0")
        walls: dict[str, list[float]] = {"plain": [], "perms": []}
        for _ in range(runs):
            for label, cb in (("plain", plain), ("perms", perms)):
                t0 = time.perf_counter()
                cb.renew("--force-renewal")
                walls[label].append(time.perf_counter() - t0)
    finally:
        pebble.stop()
    a, b = statistics.median(walls["plain"]), statistics.median(walls["perms"])
    row("certbot renew --force-renewal, median", f"{a:.2f} s without, {b:.2f} s with -i perms "
        f"({(b / a - 1) * 100:+.1f}%)", "<= +5%", b / a <= 1.05)


def byte_compile() -> None:
    """Byte-compile our packages where the hooks import them from, as pip and Debian
    packages leave an installed module: an environment with PYTHONDONTWRITEBYTECODE
    (or an editable install never imported before) would otherwise time the compiler."""
    subprocess.run([sys.executable, "-c", """
import compileall, os, sys
import certbot_atomic_deploy, certbot_perms, daemon_keys
for package in (certbot_atomic_deploy, certbot_perms, daemon_keys):
    if not compileall.compile_dir(os.path.dirname(package.__file__), quiet=1):
        sys.exit(1)
"""], check=True, cwd="/")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="repeats per timing")
    parser.add_argument("--skip-renew", action="store_true")
    parser.add_argument("--baseline", default=BEFORE_DANE, metavar="REV",
                        help=f"the tree 'dane' measures this one against (default "
                             f"{BEFORE_DANE}, the commit before the DANE gate)")
    parser.add_argument("--only", default="", metavar="PARTS",
                        help="comma-separated: deploy, unchanged, dane, syscalls, check, "
                             "shared, renew")
    args = parser.parse_args(argv)
    byte_compile()
    root = Path(tempfile.mkdtemp(prefix="hook-bench-"))
    root.chmod(0o755)
    try:
        for name, fn, runs in (("deploy", bench_deploy, args.runs),
                               ("unchanged", bench_unchanged, args.runs),
                               ("dane", bench_dane, args.runs),
                               ("syscalls", bench_syscalls, args.runs),
                               ("check", bench_check, 5),
                               ("shared", bench_shared, 3),
                               ("renew", bench_renew, 5)):
            if (name == "renew" and args.skip_renew) or (
                    args.only and name not in args.only.split(",")):
                continue
            sub = root / name
            sub.mkdir(mode=0o755)
            if name == "dane":
                bench_dane(sub, runs, args.baseline)
            else:
                fn(sub, runs)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("| measure | figure | target | |\n|---|---|---|---|")
    for r in ROWS:
        print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

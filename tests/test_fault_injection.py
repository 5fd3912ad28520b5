"""Fault injection through the real kernel: every system call of a deploy, at every occurrence.

A baseline run under ``strace -y`` lists each system call the deploy makes on
the site (its config dir, its targets, its state), numbered per call as the
kernel sees them. Each of those occurrences is then made to fail
(``-e inject=CALL:error=ERRNO:when=K``), and the mutating ones to kill the
process (``signal=KILL``). After each run:

- every target is wholly the old version or wholly the new one;
- no file holding key bytes is owned or moded beyond its spec (temp files too);
- a failing run exits non-zero with only one-line messages, no traceback;
- the next normal run succeeds, publishes the new version, leaves no temp file.

Every call named in ERRNO must occur on the site in the baseline: a call the
deploy stopped making would otherwise pass with nothing injected.

Random SIGKILLs come at a moment drawn uniformly between the measured start of
writing (80% of how long a dry run, which reads and validates, takes) and the
measured end of a deploy; a draw that comes after the run ended comes 20%
sooner (at most REDRAWS times). The test asserts that every round killed a
running deploy and that some (about a third) killed it after it had begun changing
the targets.

Set CERTBOT_DAEMON_KEYS_SLOW=1 to kill at every occurrence of every call, and
to add 200 SIGKILLs at random moments (20 by default).
"""
from __future__ import annotations

import os
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.figures import report
from tests.support.pki import key_matches_cert, make_chain, pem_of
from tests.support.site import write_lineage

DEPLOY = str(Path(sys.executable).parent / "certbot-atomic-deploy")
SLOW = os.environ.get("CERTBOT_DAEMON_KEYS_SLOW") == "1"
KEY_GID = 4242  # a numeric group with no name: the directory target's key group
ERRNO = {
    "openat": "EIO", "read": "EIO", "write": "ENOSPC", "fsync": "EIO", "fchown": "EPERM",
    "fchmod": "EPERM", "renameat": "EPERM", "symlinkat": "ENOSPC",
    "mkdirat": "ENOSPC", "unlinkat": "EIO", "readlinkat": "EIO", "flock": "ENOLCK",
    "getdents64": "EIO", "newfstatat": "EIO",
}
REDRAWS = 12  # a draw after the run ended comes 20% sooner, at most this often
MUTATING = {"write", "fsync", "fchown", "fchmod", "renameat", "symlinkat", "mkdirat",
            "unlinkat"}
_LINE = re.compile(r"^([a-z0-9_]+)\((.*)$")


@dataclass(frozen=True)
class Site:
    root: Path          # the pristine copy: lineage at v2, targets at v1
    work: Path          # where each run happens
    old: dict[str, object]
    new: dict[str, object]


def _conf(root: Path) -> str:
    # keep = 0: the run also prunes the old version (unlinkat) of both targets
    return f"""\
[defaults]
keep = 0
keep_seconds = 0

[file]
lineage = mail
path = {root}/out/mail.pem
format = postfix

[dir]
lineage = mail
directory = {root}/out/d
group = {KEY_GID}
mode = 0640
"""


def _targets(root: Path) -> dict[str, object]:
    """What the two targets hold now (None where absent)."""
    file_target = root / "out" / "mail.pem"
    current = root / "out" / "d" / "current"
    directory = ({p.name: p.read_bytes() for p in sorted(current.iterdir())}
                 if current.exists() else None)
    return {"file": file_target.read_bytes() if file_target.exists() else None,
            "dir": directory}


def _deploy(root: Path, *strace: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    cmd = [*strace, DEPLOY, "--config-dir", str(root / "le"), "deploy", "--all"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    base = tmp_path_factory.mktemp("faults")
    root = base / "site"
    (root / "out").mkdir(parents=True)
    key, chain = make_chain(["mail.example.org"])
    write_lineage(root / "le", "mail", 1, pem_of(key), chain)
    (root / "le" / "atomic-deploy.conf").write_text(_conf(root))
    first = _deploy(root)
    assert first.returncode == 0, first.stderr
    old = _targets(root)
    key, chain = make_chain(["mail.example.org"])
    write_lineage(root / "le", "mail", 2, pem_of(key), chain)
    # What a killed run leaves: every run removes them first (more unlinkat to fail).
    leftover = root / "out" / ".mail.pem.00000000deadbeef.tmp"
    leftover.write_bytes(pem_of(key))
    leftover.chmod(0o600)
    (root / "out" / "d" / ".v9.00000000deadbeef.tmp").mkdir(mode=0o700)
    probe = base / "probe"
    _copy(root, probe)
    assert _deploy(probe).returncode == 0
    new = _targets(probe)
    assert old != new
    return Site(root=root, work=base / "work", old=_relocated(old), new=_relocated(new))


def _rewrite_paths(copy: Path, original: Path) -> None:
    conf = copy / "le" / "atomic-deploy.conf"
    conf.write_text(conf.read_text().replace(str(original), str(copy)))


def _relocated(targets: dict[str, object]) -> dict[str, object]:
    return targets  # target contents hold no paths; kept for clarity at the call sites


def _fresh(site: Site) -> Path:
    if site.work.exists():
        shutil.rmtree(site.work)
    _copy(site.root, site.work)
    return site.work


def _copy(src: Path, dst: Path) -> None:
    """A copy with owners, modes and links as they are (cp -a), config pointed at it."""
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    _rewrite_paths(dst, src)


@pytest.fixture(scope="module")
def points(site: Site) -> dict[str, list[int]]:
    """syscall -> the occurrence numbers (1-based, per call) that touch the site."""
    work = _fresh(site)
    log = work.parent / "baseline.trace"
    run = _deploy(work, "strace", "-qq", "-y", "-o", str(log),
                  "-e", "trace=" + ",".join(ERRNO))
    assert run.returncode == 0, run.stderr
    seen: Counter[str] = Counter()
    found: dict[str, list[int]] = {}
    for line in log.read_text().splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        name = m.group(1)
        seen[name] += 1
        if str(work) in m.group(2):
            found.setdefault(name, []).append(seen[name])
    return found


def _check_after(site: Site, work: Path, run: subprocess.CompletedProcess[str],
                 label: str) -> list[str]:
    problems = []
    now = _targets(work)
    for name in ("file", "dir"):
        if now[name] not in (site.old[name], site.new[name]):
            problems.append(f"{label}: target {name} is neither wholly old nor wholly new")
    if isinstance(now["dir"], dict):
        files = now["dir"]
        if not key_matches_cert(files["privkey.pem"], files["cert.pem"]):
            problems.append(f"{label}: dir target holds a mismatched pair")
    if run.returncode == 0 and now != site.new:
        problems.append(f"{label}: exit 0 but the targets are not the new version")
    if run.returncode < 0:
        pass  # killed: no message to judge
    elif run.returncode != 0:
        lines = run.stderr.strip().splitlines()
        if not lines or "Traceback" in run.stderr or any(
                not ln.startswith("certbot-atomic-deploy: ") for ln in lines):
            problems.append(f"{label}: exit {run.returncode} without one-line messages: "
                            f"{run.stderr[-300:]!r}")
    problems += _exposure(work, label)
    again = _deploy(work)
    if again.returncode != 0 or _targets(work) != site.new:
        problems.append(f"{label}: the next normal run failed: {again.stderr.strip()}")
    leftovers = [str(p) for p in (work / "out").rglob("*") if p.name.endswith(".tmp")]
    if leftovers:
        problems.append(f"{label}: the next run left temp files {leftovers}")
    return problems


def _exposure(work: Path, label: str) -> list[str]:
    """Files holding key bytes must be root's, mode within 0600 (or 0640 for KEY_GID)."""
    problems = []
    for path in (work / "out").rglob("*"):
        st = path.lstat()
        if not stat.S_ISREG(st.st_mode) or b"PRIVATE KEY" not in path.read_bytes():
            continue
        mode = stat.S_IMODE(st.st_mode)
        allowed = 0o640 if st.st_gid == KEY_GID else 0o600
        if st.st_uid != 0 or mode & ~allowed or st.st_gid not in (0, KEY_GID):
            problems.append(f"{label}: {path} holds key bytes as {st.st_uid}:{st.st_gid} "
                            f"{mode:04o}")
    return problems


@pytest.mark.parametrize("syscall", sorted(ERRNO))
def test_every_occurrence_of_a_failing_syscall_leaves_targets_whole(
        site: Site, points: dict[str, list[int]], syscall: str) -> None:
    occurrences = points.get(syscall, [])
    assert occurrences, (f"the deploy made no {syscall} call on the site: nothing would be "
                         "injected (drop it from ERRNO, or find why the run stopped making it)")
    kills = occurrences if (SLOW or syscall in MUTATING) else []
    problems: list[str] = []
    for k in occurrences:
        for action in [f"error={ERRNO[syscall]}", *(["signal=KILL"] if k in kills else [])]:
            work = _fresh(site)
            run = _deploy(work, "strace", "-qq", "-o", "/dev/null",
                          "-e", f"trace={syscall}", "-e", f"inject={syscall}:{action}:when={k}")
            problems += _check_after(site, work, run, f"{syscall}#{k} {action}")
    report(f"fault injection {syscall}: {len(occurrences)} occurrences, "
           f"{len(occurrences) + len(kills)} injections, {len(problems)} broken")
    assert problems == []


def _median_seconds(cmd: list[str], runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _deploy_seconds(site: Site, runs: int = 5) -> float:
    """The median wall time of a whole deploy of a fresh copy, start to exit."""
    times = []
    for _ in range(runs):
        work = _fresh(site)
        t0 = time.perf_counter()
        assert _deploy(work).returncode == 0
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _kill_at(site: Site, delay: float) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """A deploy of a fresh copy, sent SIGKILL ``delay`` seconds after it started if it still
    runs; returns the copy and the run (its returncode says whether the kill landed)."""
    work = _fresh(site)
    proc = subprocess.Popen([DEPLOY, "--config-dir", str(work / "le"), "deploy", "--all"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    return work, subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() and not p.is_symlink()
                                       else str(p.readlink() if p.is_symlink() else "").encode())
            for p in root.rglob("*")}


def test_sigkill_at_random_moments_leaves_targets_whole(site: Site) -> None:
    rng = random.Random(20261122)
    rounds = 200 if SLOW else 20
    # The kill is drawn between the moment a deploy starts writing (measured as a dry
    # run: reading and validating, nothing written) and its end, both measured now.
    work = _fresh(site)
    end = _deploy_seconds(site)
    start = 0.8 * min(end, _median_seconds([DEPLOY, "--config-dir", str(work / "le"),
                                             "deploy", "--all", "--dry-run"]))
    pristine = _tree(site.root / "out")
    problems: list[str] = []
    killed = changing = redrawn = 0
    for i in range(rounds):
        delay = rng.uniform(start, end)
        for _ in range(REDRAWS):
            work, run = _kill_at(site, delay)
            if run.returncode == -signal.SIGKILL:
                killed += 1
                break
            redrawn += 1  # this run ended first: kill the next one sooner
            delay *= 0.8
        changing += _tree(work / "out") != pristine
        problems += _check_after(site, work, run, f"random kill #{i} at {delay * 1e3:.0f} ms")
    report(f"random SIGKILL: {rounds} rounds, each drawn between the start of writing "
           f"({start * 1e3:.0f} ms) and the end of a deploy ({end * 1e3:.0f} ms): {killed} "
           f"killed a running deploy ({redrawn} draws came after the run ended and were made "
           f"20% sooner), {changing} of them once it had begun changing the targets; "
           f"{len(problems)} broken")
    assert killed == rounds
    assert changing >= 2  # some kills land in the writing, not all before it (~1/3 do)
    assert problems == []

"""Running a target's ``check`` and ``reload`` commands. Imports no certbot.

A command is a ``/bin/sh -c`` line from the config, with ``{lineage}``,
``{domains}`` and ``{path}`` substituted (each shell-quoted), run with the
target and lineage in its environment, stdin from /dev/null, and a time limit.
"""
from __future__ import annotations

import contextlib
import os
import shlex
from collections.abc import Iterable

OUTPUT_KEPT = 1 << 16  # bytes of each of a command's streams kept for its report
DRAIN_SECONDS = 1.0  # how long output is still read once the shell has exited


class CommandRun:
    """One command that ran: what, whether it succeeded, and its first error line if not."""

    def __init__(self, command: str, ok: bool, detail: str, kind: str = "reload") -> None:
        self.command = command
        self.ok = ok
        self.detail = detail
        self.kind = kind  # reload | check


def expand(template: str, destination: str, lineage: str, names: Iterable[str]) -> str:
    """Substitute {lineage}, {domains} and {path}, each shell-quoted."""
    return (template.replace("{lineage}", shlex.quote(lineage))
            .replace("{domains}", shlex.quote(" ".join(names)))
            .replace("{path}", shlex.quote(destination)))


def environment(config_dir: str, target: str, destination: str, lineage: str,
                names: Iterable[str]) -> dict[str, str]:
    """The command's environment: ours, plus what certbot gives a deploy hook."""
    return dict(os.environ, CERTBOT_DEPLOY_TARGET=target, CERTBOT_DEPLOY_PATH=destination,
                RENEWED_LINEAGE=os.path.join(config_dir, "live", lineage),
                RENEWED_DOMAINS=" ".join(names))


def run_command(command: str, env: dict[str, str], timeout: float,
                kind: str = "reload") -> CommandRun:
    """Run ``command`` with ``/bin/sh -c`` in a session of its own.

    The run ends when the shell exits (a daemon it started may keep our pipes
    open: we do not wait for them). Of its output only the first
    :data:`OUTPUT_KEPT` bytes of each stream are kept, however much it prints.
    Past ``timeout`` (or if we are interrupted) every process it started is
    killed, not just the shell's group: also one that left it with ``setsid``,
    and (this process being a child subreaper) one orphaned on the way, found by
    parentage in /proc (:func:`_started_by`). Nothing it started outlives the run
    that waits for it under the lock. A command that exits by itself keeps what
    it started (a reload may start a daemon).
    """
    import selectors
    import subprocess  # only runs that changed something get here: keep it off start-up
    import time

    _subreaper(True)
    proc = subprocess.Popen(["/bin/sh", "-c", command], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    started = _start_time(proc.pid)
    assert proc.stdout is not None and proc.stderr is not None
    kept: dict[int, bytearray] = {proc.stderr.fileno(): bytearray(),
                                  proc.stdout.fileno(): bytearray()}
    deadline = time.monotonic() + timeout
    timed_out = False
    try:
        with selectors.DefaultSelector() as sel:
            for fd in kept:
                os.set_blocking(fd, False)
                sel.register(fd, selectors.EVENT_READ)
            drain_until = None
            while sel.get_map():
                now = time.monotonic()
                if drain_until is None and proc.poll() is not None:
                    drain_until = now + DRAIN_SECONDS
                if drain_until is None and now >= deadline:
                    timed_out = True
                    break
                # Once the shell is gone, read what is already there and stop: a daemon
                # it started may hold the pipes open (or keep writing) for good.
                if drain_until is not None and now >= drain_until:
                    break
                ready = sel.select(0 if drain_until else min(deadline - now, 0.2))
                if drain_until is not None and not ready:
                    break
                for key, _ in ready:
                    fd = int(key.fd)
                    try:
                        chunk = os.read(fd, 1 << 16)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        sel.unregister(fd)
                    kept[fd] += chunk[:max(0, OUTPUT_KEPT - len(kept[fd]))]
        if not timed_out:  # both streams closed early: the shell itself may still run
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
    finally:
        if proc.poll() is None:  # timed out, or we were interrupted: stop all it started
            _kill_all(proc.pid, started)
            proc.wait()
        _subreaper(False)  # adopt only what is orphaned while a command of ours runs
        _reap_adopted(started)
        proc.stdout.close()
        proc.stderr.close()
    if timed_out:
        return CommandRun(command, False, f"timed out after {timeout:g} s (killed it and "
                                          "every process it started)", kind)
    code = proc.wait()
    if code == 0:
        return CommandRun(command, True, "ok", kind)
    return CommandRun(command, False, _first_error(code, *(bytes(b) for b in kept.values())),
                      kind)


PR_SET_CHILD_SUBREAPER = 36


def _subreaper(on: bool) -> None:
    """prctl(PR_SET_CHILD_SUBREAPER) while a command runs: a process orphaned below us is
    reparented to us, not to init, so a command's double-forked child can still be found
    and killed. Off again afterwards: a daemon a reload started stays ours only if it
    was orphaned meanwhile (and goes to init when we exit)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)


def _reap_adopted(since: int) -> None:
    """Wait for what we adopted from a command and has already exited (a zombie of ours
    that subprocess knows nothing of)."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            found = _stat(int(entry))
            if found is not None and found[0] == me and found[1] >= since:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(int(entry), os.WNOHANG)


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of ``pid`` from /proc, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()  # the name may hold spaces and ')'
    return int(fields[1]), int(fields[19])


def _start_time(pid: int) -> int:
    found = _stat(pid)
    return found[1] if found else 0


def _started_by(root: int, since: int) -> set[int]:
    """Every live process below ``root`` (by parentage, whatever its session), and every
    process adopted by us (the subreaper) that started since ``since``."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            found = _stat(int(entry))
            if found is not None:
                table[int(entry)] = found
    me = os.getpid()
    below = {root}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, start) in table.items():
            if pid not in below and (ppid in below or (ppid == me and start >= since)):
                below.add(pid)
                grew = True
    return below - {root}


def _kill_all(root: int, since: int) -> None:
    """SIGKILL the group of ``root`` and everything it started; again while new ones
    appear (a fork in flight). Adopted ones are reaped here (subprocess does not)."""
    import signal

    me = os.getpid()
    for _ in range(20):
        others = _started_by(root, since)
        for pid in others:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(root, signal.SIGKILL)
        for pid in others:
            found = _stat(pid)
            if found is not None and found[0] == me:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
        if not others:
            return


_ERROR_WORDS = ("error", "fatal", "fail", "invalid", "cannot", "can't", "unable", "denied",
                "not found", "no such")


def _first_error(code: int, *outputs: bytes) -> str:
    """'exit N: LINE': the first line that reads as an error (a config test prints its
    real complaint first and a summary last), else the first line; at most 300 chars."""
    status = f"killed by signal {-code}" if code < 0 else f"exit {code}"
    for output in outputs:
        lines = [line.strip() for line in output.decode("utf-8", "replace").splitlines()
                 if line.strip()]
        if lines:
            line = next((x for x in lines if any(w in x.lower() for w in _ERROR_WORDS)),
                        lines[0])
            return f"{status}: {line[:300]}"
    return status


def open_as(user: str, path: str) -> CommandRun:
    """Open ``path`` for reading as ``user`` (its uid, primary group and supplementary
    groups, as the daemon gets them), read nothing, close: whether the daemon running
    as that user could open the file we published. A check run before any reload.

    A forked child drops to the user and opens; nothing is executed, so it works
    whatever the user may run.
    """
    import errno
    import pwd

    what = f"open {path} as {user}"
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return CommandRun(what, False, f"user '{user}' does not exist", "check")
    groups = os.getgrouplist(user, entry.pw_gid)
    pid = os.fork()
    if pid == 0:  # the child: never returns
        status = 125
        try:
            os.setgroups(groups)
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY))
            status = 0
        except OSError as exc:
            status = min(exc.errno or 124, 124)
        finally:
            os._exit(status)
    _, wait_status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(wait_status)
    if code == 0:
        return CommandRun(what, True, "ok", "check")
    why = (os.strerror(code) if 0 < code < 124 and code in errno.errorcode
           else f"exit {code}")
    return CommandRun(what, False, f"{user} cannot open it: {why}", "check")

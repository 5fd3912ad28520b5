"""The sending end of a push (issue 14): one request to one host's receiver over ssh.

Imports no certbot and no cryptography. Each host's session is one ``ssh``
process that runs the forced command of the sender's key on the far side (whatever
command it asks for, the host's ``authorized_keys`` decides what runs; it asks
for none): the request goes on ssh's stdin, so key bytes are never in any
process's argv or environment, and the receiver's one JSON line comes back on
stdout. ssh runs in batch mode (no prompt ever), with this target's identity
only, and trusts only the host keys pinned in its ``known_hosts``: a host whose
key is not there, or differs, gets nothing (ssh exits 255 before sending a byte
of the request). Connection multiplexing, agent and port forwarding and host-key
updates are off, whatever ssh_config says; routing from ssh_config
(``ProxyJump``, ``HostName``) still applies.

:func:`ask_all` sends many requests at once, at most ``parallel`` at a time
(threads: each only waits on its ssh process). A :class:`Session` keeps one
connection per host for both phases.
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import tempfile
import time
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, NamedTuple

from certbot_atomic_deploy.receive import PROTOCOL

if TYPE_CHECKING:
    from certbot_atomic_deploy.config import HostTarget
    from certbot_atomic_deploy.pem import Material

SSH = "ssh"
SSH_UNREACHABLE = 255  # ssh's own failure: connection, host key, authentication
MAX_ANSWER_BYTES = 1 << 20
CLOSE_SECONDS = 10.0  # for a receiver to exit once its session's input has ended


def ssh_argv(target: HostTarget) -> list[str]:
    """The ssh command line of a session with ``target``: no secret in it."""
    options = {
        "BatchMode": "yes", "IdentitiesOnly": "yes", "IdentityFile": target.identity,
        "StrictHostKeyChecking": "yes", "UserKnownHostsFile": target.known_hosts,
        "GlobalKnownHostsFile": "/dev/null", "UpdateHostKeys": "no",
        "CheckHostIP": "no", "ConnectTimeout": str(target.connect_timeout),
        "ServerAliveInterval": "15", "ServerAliveCountMax": "3",
        "ControlMaster": "no", "ControlPath": "none", "ForwardAgent": "no",
        "ForwardX11": "no", "ClearAllForwardings": "yes", "PermitLocalCommand": "no",
        "RequestTTY": "no", "LogLevel": "ERROR", "User": target.user,
        "Port": str(target.port)}
    argv = [SSH]
    for key, value in options.items():
        argv += ["-o", f"{key}={value}"]
    return [*argv, "--", target.host]


def stage_request(material: Material) -> bytes:
    """A stage request: the lineage version's key, certificate and chain, as PEM text."""
    return json.dumps({
        "protocol": PROTOCOL, "action": "stage", "lineage": material.lineage,
        "version": material.version, "privkey": material.key.text.decode("ascii"),
        "cert": material.leaf.text.decode("ascii"),
        "chain": b"".join(b.text for b in material.chain[1:]).decode("ascii")}).encode()


def request(action: str, lineage: str, version: int) -> bytes:
    """A commit or abort request."""
    return json.dumps({"protocol": PROTOCOL, "action": action, "lineage": lineage,
                       "version": version}).encode()


class Exchange(NamedTuple):
    """One request's fate on one host."""

    ok: bool  # the receiver answered and said ok
    answer: dict[str, object] | None  # its JSON answer, if it gave one
    detail: str  # one line: why not ok (or what it did)


class Session:
    """One ssh connection to a host's receiver: a stage, then (once every host has
    answered its own) that version's commit or abort, each request a line on ssh's
    stdin and each answer a line on its stdout. One login and one receiver process a
    host per push; the connection idles between the two phases."""

    def __init__(self, target: HostTarget) -> None:
        self.target = target
        self._proc: subprocess.Popen[bytes] | None = None
        self._errors: IO[bytes] | None = None
        self._buffer = b""
        self._ended: Exchange | None = None  # once the connection is gone: why
        self._closed: int | None = None  # ssh's exit status, once closed
        self._error_text = ""  # its stderr, once closed

    def ask(self, data: bytes) -> Exchange:
        """Send one request and read its answer (at most ``timeout`` seconds)."""
        started = time.monotonic()
        if self._ended is not None:
            return self._ended
        try:
            if self._proc is None:
                # ssh's stderr, read when the session closes (a pipe could fill and
                # block it while we wait on stdout); closed in close().
                self._errors = tempfile.TemporaryFile()  # noqa: SIM115
                self._proc = subprocess.Popen(ssh_argv(self.target), stdin=subprocess.PIPE,
                                              stdout=subprocess.PIPE, stderr=self._errors)
            assert self._proc.stdin is not None
            self._proc.stdin.write(data + b"\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            pass  # it has gone: its exit status and stderr say why
        except OSError as exc:
            return self._end(Exchange(False, None, f"cannot run {SSH}: {exc.strerror} "
                                      "(install openssh-client)"))
        line = self._read_line(started + self.target.timeout)
        if line is None:
            self.close(kill=True)
            return self._end(Exchange(False, None, f"no answer within "
                                      f"{self.target.timeout:g} s (timeout = N sets it)"))
        answer = _answer(line)
        if answer is None:
            return self._end(self._gone())
        if answer.get("ok") is not True:
            self.close()
            why = answer.get("error") or self._stderr() or "refused"
            return self._end(Exchange(False, answer, f"its receiver: {why}"))
        return Exchange(True, answer, "ok")

    def close(self, kill: bool = False) -> None:
        """End the session: the receiver sees the end of its input and exits (``kill``:
        ssh is killed, for a host that did not answer in time)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if kill:
            proc.kill()
        try:
            if proc.stdin is not None:
                proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=CLOSE_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        self._closed = proc.returncode
        if self._errors is not None:
            self._errors.seek(0)
            self._error_text = self._errors.read(MAX_ANSWER_BYTES).decode(
                "utf-8", "replace").strip()
            self._errors.close()
            self._errors = None

    def _read_line(self, deadline: float) -> bytes | None:
        """The next line of ssh's stdout: b"" at its end, None at the deadline."""
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            self._buffer += chunk
            if len(self._buffer) > MAX_ANSWER_BYTES:
                break
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def _gone(self) -> Exchange:
        """The connection ended with no answer of ours: say why from ssh's exit."""
        self.close()
        code, err = self._closed, self._stderr()
        if code == SSH_UNREACHABLE:
            if not err:  # ssh says why it failed; a signal ends the remote side silently
                return Exchange(False, None, "the connection ended with no answer (its "
                                "receiver was killed by a signal?)")
            return Exchange(False, None, f"unreachable: {_ssh_error(err, self.target)}")
        first = _first_line(err.encode())
        return Exchange(False, None, f"no answer from its receiver (exit {code}"
                        f"{': ' + first if first else ''}; is the key's forced command "
                        "'certbot-atomic-deploy --config FILE receive'?)")

    def _stderr(self) -> str:
        """What ssh and the receiver said on stderr (once the session is closed)."""
        return self._error_text

    def _end(self, exchange: Exchange) -> Exchange:
        self._ended = exchange
        return exchange


def ask_all(asks: Sequence[tuple[Session, bytes]], parallel: int) -> list[Exchange]:
    """Every request, at most ``parallel`` at a time; results in the order of ``asks``."""
    if len(asks) <= 1 or parallel == 1:
        return [session.ask(data) for session, data in asks]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(parallel, len(asks))) as pool:
        return list(pool.map(lambda ask: ask[0].ask(ask[1]), asks))


def close_all(sessions: Sequence[Session]) -> None:
    for session in sessions:
        session.close()


def _answer(line: bytes) -> dict[str, object] | None:
    """The receiver's answer, if ``line`` is a JSON object of ours."""
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) and value.get("protocol") == PROTOCOL else None


def _ssh_error(text: str, target: HostTarget) -> str:
    """ssh's own failure in one line: its last line says what ended it (a changed host
    key comes first as a banner of '@' lines)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    last = lines[-1][:300] if lines else "ssh failed"
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in text:
        return (f"its host key is not the one pinned in {target.known_hosts} ({last}); "
                "if the host was reinstalled, pin its new key there")
    if "host key is known" in text or "No matching host key" in text:
        return f"{last} (pin its key in {target.known_hosts})"
    return last


def _first_line(data: bytes) -> str:
    for line in data.decode("utf-8", "replace").splitlines():
        if line.strip():
            return line.strip()[:300]
    return ""

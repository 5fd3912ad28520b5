"""The sending end of a push (issue 14): one request to one host's receiver over ssh.

Imports no certbot and no cryptography. Each exchange is one ``ssh`` process
that runs the forced command of the sender's key on the far side (whatever
command it asks for, the host's ``authorized_keys`` decides what runs; it asks
for none): the request goes on ssh's stdin, so key bytes are never in any
process's argv or environment, and the receiver's one JSON line comes back on
stdout. ssh runs in batch mode (no prompt ever), with this target's identity
only, and trusts only the host keys pinned in its ``known_hosts``: a host whose
key is not there, or differs, gets nothing (ssh exits 255 before sending a byte
of the request). Connection multiplexing, agent and port forwarding and host-key
updates are off, whatever ssh_config says; routing from ssh_config
(``ProxyJump``, ``HostName``) still applies.

:func:`exchange_all` runs many exchanges at once, at most ``parallel`` at a time
(threads: each only waits on its ssh process).
"""
from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from certbot_atomic_deploy.receive import PROTOCOL

if TYPE_CHECKING:
    from certbot_atomic_deploy.config import HostTarget
    from certbot_atomic_deploy.pem import Material

SSH = "ssh"
SSH_UNREACHABLE = 255  # ssh's own failure: connection, host key, authentication
MAX_ANSWER_BYTES = 1 << 20


def ssh_argv(target: HostTarget) -> list[str]:
    """The ssh command line of an exchange with ``target``: no secret in it."""
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
    seconds: float


def exchange(target: HostTarget, data: bytes) -> Exchange:
    """Send one request to ``target``'s receiver and read its answer."""
    started = time.monotonic()
    try:
        done = subprocess.run(ssh_argv(target), input=data, capture_output=True,
                              timeout=target.timeout, check=False)
    except subprocess.TimeoutExpired:
        return Exchange(False, None, f"no answer within {target.timeout:g} s (timeout = N "
                        "sets it)", time.monotonic() - started)
    except OSError as exc:
        return Exchange(False, None, f"cannot run {SSH}: {exc.strerror} (install "
                        "openssh-client)", time.monotonic() - started)
    seconds = time.monotonic() - started
    err = _first_line(done.stderr)
    answer = _answer(done.stdout)
    if answer is None and done.returncode == SSH_UNREACHABLE:
        if not done.stderr.strip():  # ssh says why it failed; a signal ends it silently
            return Exchange(False, None, "the connection ended with no answer (its receiver "
                            "was killed by a signal?)", seconds)
        return Exchange(False, None, f"unreachable: {_ssh_error(done.stderr, target)}",
                        seconds)
    if answer is None:
        return Exchange(False, None, f"no answer from its receiver (exit {done.returncode}"
                        f"{': ' + err if err else ''}; is the key's forced command "
                        "'certbot-atomic-deploy --config FILE receive'?)", seconds)
    if answer.get("ok") is not True:
        why = answer.get("error") or err or f"exit {done.returncode}"
        return Exchange(False, answer, f"its receiver: {why}", seconds)
    return Exchange(True, answer, "ok", seconds)


def exchange_all(jobs: Sequence[tuple[HostTarget, bytes]], parallel: int) -> list[Exchange]:
    """Every exchange, at most ``parallel`` at a time; results in the order of ``jobs``."""
    if not jobs:
        return []
    if len(jobs) == 1 or parallel == 1:
        return [exchange(t, d) for t, d in jobs]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(parallel, len(jobs))) as pool:
        return list(pool.map(lambda job: exchange(*job), jobs))


def _answer(stdout: bytes) -> dict[str, object] | None:
    """The receiver's answer: the last line of its output that is a JSON object of ours."""
    for line in reversed(stdout[:MAX_ANSWER_BYTES].splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict) and value.get("protocol") == PROTOCOL:
            return value
    return None


def _ssh_error(stderr: bytes, target: HostTarget) -> str:
    """ssh's own failure in one line: its last line says what ended it (a changed host
    key comes first as a banner of '@' lines)."""
    text = stderr.decode("utf-8", "replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    last = lines[-1][:300] if lines else "ssh failed"
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in text:
        return (f"its host key is not the one pinned in {target.known_hosts} ({last}); "
                "if the host was reinstalled, pin its new key there")
    if "No ED25519 host key is known" in text or "No matching host key" in text or (
            "host key is known" in text):
        return f"{last} (pin its key in {target.known_hosts})"
    return last


def _first_line(data: bytes) -> str:
    for line in data.decode("utf-8", "replace").splitlines():
        if line.strip():
            return line.strip()[:300]
    return ""

"""Proof of what is served: connect to a daemon and compare its certificate with ours.

Imports no certbot and no cryptography (the standard library's ``ssl``). A target's
``probe = HOST:PORT[/PROTO]`` connects after its reload, over TLS from the first byte
(``tls``, the default) or after the protocol's STARTTLS (``smtp``, ``imap``, ``pop3``),
sends the certificate's first name as SNI, and compares the certificate the daemon
presents, byte for byte, with the one just published. Nothing is verified beyond
that: the question is which certificate is served, not whether a client trusts it.
A daemon still reloading is asked again until the probe's time is up.

``ssl`` and ``socket`` are imported only when a probe runs: the config reads
``probe =`` on every hook start.
"""
from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, BinaryIO, NamedTuple

if TYPE_CHECKING:
    import socket

PROTOCOLS = ("tls", "smtp", "imap", "pop3")
DEFAULT_PROBE_SECONDS = 10.0
_RETRY = 0.2
_MAX_LINE = 4096
# Compiled when a probe is read (re caches it), not when the hook starts.
_SPEC = (r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9][A-Za-z0-9.-]{0,252}))"
         r":(?P<port>[0-9]{1,5})(?:/(?P<proto>[a-z0-9]+))?$")


class Probe(NamedTuple):
    host: str
    port: int
    protocol: str

    def describe(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}/{self.protocol}"


def parse_probe(text: str) -> Probe:
    """``HOST:PORT[/PROTO]``; ValueError says what is wrong."""
    match = re.match(_SPEC, text.strip())
    port = int(match.group("port")) if match else 0
    if match is None or not 1 <= port <= 65535:
        raise ValueError(f"'{text}' is not HOST:PORT[/PROTO] (an IPv6 address in brackets)")
    protocol = match.group("proto") or "tls"
    if protocol not in PROTOCOLS:
        raise ValueError(f"'{protocol}' is not one of {', '.join(PROTOCOLS)}")
    return Probe(match.group("v6") or match.group("name"), port, protocol)


class ProbeResult(NamedTuple):
    ok: bool
    detail: str  # one line: what was served, or why nothing could be read


def served_certificate(probe: Probe, server_name: str, timeout: float) -> bytes:
    """The DER certificate the daemon presents (OSError, ssl.SSLError on failure)."""
    import socket
    import ssl

    with socket.create_connection((probe.host, probe.port), timeout=timeout) as raw:
        raw.settimeout(timeout)
        _starttls(raw, probe.protocol)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # we compare bytes: which one, not whether trusted
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
    if not der:
        raise OSError("no certificate presented")
    return der


def check(probe: Probe, leaf_pem: bytes, serial: str, server_name: str,
          seconds: float = DEFAULT_PROBE_SECONDS) -> ProbeResult:
    """Whether ``probe`` serves ``leaf_pem``, asked until ``seconds`` have passed."""
    import ssl

    wanted = ssl.PEM_cert_to_DER_cert(leaf_pem.decode("ascii"))
    deadline = time.monotonic() + seconds
    last = "no answer"
    while True:
        left = deadline - time.monotonic()
        try:
            served = served_certificate(probe, server_name, max(1.0, min(left, 5.0)))
        except (OSError, ssl.SSLError, ValueError) as exc:
            last = f"cannot read its certificate: {_reason(exc)}"
        else:
            if served == wanted:
                return ProbeResult(True, f"{probe.describe()} serves serial {serial}")
            last = (f"{probe.describe()} serves another certificate (serial "
                    f"{_serial_of(served)}), not serial {serial}")
        if time.monotonic() + _RETRY >= deadline:
            return ProbeResult(False, f"{last} after {seconds:g} s")
        time.sleep(_RETRY)


def _starttls(sock: socket.socket, protocol: str) -> None:
    """Bring a plain-text connection to the point where TLS starts."""
    if protocol == "tls":
        return
    reader = sock.makefile("rb")
    try:
        if protocol == "smtp":
            _expect(reader, b"220", smtp=True)
            sock.sendall(b"EHLO probe.invalid\r\n")
            _expect(reader, b"250", smtp=True)
            sock.sendall(b"STARTTLS\r\n")
            _expect(reader, b"220", smtp=True)
        elif protocol == "imap":
            _expect(reader, b"* OK")
            sock.sendall(b"p1 STARTTLS\r\n")
            while not (line := _line(reader)).startswith(b"p1 "):
                pass
            if not line.startswith(b"p1 OK"):
                raise OSError(f"STARTTLS refused: {line[:200]!r}")
        else:  # pop3
            _expect(reader, b"+OK")
            sock.sendall(b"STLS\r\n")
            _expect(reader, b"+OK")
    finally:
        reader.close()  # the socket stays open (makefile holds its own reference)


def _line(reader: BinaryIO) -> bytes:
    line = reader.readline(_MAX_LINE)
    if not line:
        raise OSError("the server closed the connection")
    return line


def _expect(reader: BinaryIO, code: bytes, smtp: bool = False) -> None:
    """Read one reply (SMTP: every line of a multi-line one) starting with ``code``."""
    while True:
        line = _line(reader)
        if not line.startswith(code):
            raise OSError(f"unexpected reply {line[:200]!r}")
        if not smtp or line[3:4] != b"-":
            return


def _serial_of(der: bytes) -> str:
    """The serial of a DER certificate, read from its TBSCertificate (lowercase hex)."""
    try:
        body = _inside(der, 0)  # Certificate SEQUENCE -> its content
        tbs = _inside(body, 0)  # TBSCertificate SEQUENCE -> its content
        offset = 0
        if tbs[0] == 0xA0:  # [0] version
            offset = _skip(tbs, 0)
        if tbs[offset] != 0x02:
            return "unknown"
        start, length = _header(tbs, offset)
        return tbs[start:start + length].hex().lstrip("0") or "0"
    except IndexError:
        return "unknown"


def _header(data: bytes, offset: int) -> tuple[int, int]:
    """Where a DER element's content starts, and its length."""
    first = data[offset + 1]
    if first < 0x80:
        return offset + 2, first
    count = first & 0x7F
    return offset + 2 + count, int.from_bytes(data[offset + 2:offset + 2 + count], "big")


def _inside(data: bytes, offset: int) -> bytes:
    start, length = _header(data, offset)
    return data[start:start + length]


def _skip(data: bytes, offset: int) -> int:
    start, length = _header(data, offset)
    return start + length


def _reason(exc: BaseException) -> str:
    import socket

    if isinstance(exc, socket.timeout):
        return "timed out"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text)[:200]

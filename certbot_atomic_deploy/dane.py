"""The DANE gate: a target never switches to a key its published TLSA records do not vouch for.

Imports no certbot; dnspython (Debian's python3-dnspython, 2.1 or newer) only when
a target has ``tlsa =``, so the hook's start-up for every other target is unchanged.

A target with ``tlsa = NAME[, NAME...]`` switches to new material only when, for
each NAME, at least one record of its TLSA RRset matches the chain it would
serve (:func:`certbot_atomic_deploy.tlsa.matches`: usages 3 and 2, selectors 0
and 1, matching types 0, 1, 2). The records are asked of ``dns_server`` (else
the nameservers of /etc/resolv.conf, in order); with ``dnssec = require`` only
an answer whose AD bit says a validating resolver checked it counts (trust that
bit only from a resolver on a path nobody can forge: 127.0.0.1, or a link you
trust). No answer, a SERVFAIL, a forged (unvalidated) answer: the target keeps
what it serves and the switch stays pending, as it does when no record matches.

Near the served certificate's expiry (``tlsa_grace_days``, 7 by default) the
``tlsa_near_expiry`` rule decides: ``switch`` (the default) publishes anyway,
with a loud line (an expired certificate fails every sender that checks dates:
MTA-STS senders, IMAP and submission clients; a DANE-EE record that does not
match fails DANE senders only, and they retry), ``hold`` keeps what is served.

With ``tlsa_update = KEYFILE`` (a TSIG key, readable by its owner only) the
records are published and retired over RFC 2136 (:func:`update`), resumably:
one run adds the new key's ``3 1 1`` record and records when every cache has
seen it (the RRset's TTL, or the zone's negative-caching TTL when there was no
RRset, at most ``MAX_WAIT``); the first run after that switches; the first run
a TTL after the switch removes the records that vouch for the old material
only. No run ever sleeps for a TTL.
"""
from __future__ import annotations

import datetime
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from certbot_atomic_deploy.state import DaneState
from daemon_keys.errors import ConfigError, KeysError
from daemon_keys.fs import read_regular
from daemon_keys.trust import file_check

if TYPE_CHECKING:  # imported where used: no cost to the hook's start-up without DANE
    import dns.message

    from certbot_atomic_deploy.tlsa import Tlsa

NEAR_EXPIRY = ("switch", "hold")
DEFAULT_GRACE_DAYS = 7
DEFAULT_TTL = 3600  # of a record we add to an RRset that does not exist yet
DEFAULT_TIMEOUT = 5.0  # seconds for one DNS server's answer
# The longest any common resolver keeps an answer (BIND's max-cache-ttl, 7 days;
# unbound's cache-max-ttl is 1 day): a longer TTL is waited for this long, said loudly.
MAX_WAIT = 7 * 86400
MAX_KEY_FILE_BYTES = 4096
DNS_PORT = 53
_BIND_KEY = (
    r'key\s+"?([A-Za-z0-9._-]+)"?\s*\{\s*algorithm\s+"?([A-Za-z0-9.-]+)"?\s*;\s*'
    r'secret\s+"([A-Za-z0-9+/=]+)"\s*;\s*\}\s*;')
_KNOT_KEY = (
    r'-\s*id:\s*"?([A-Za-z0-9._-]+)"?\s+algorithm:\s*"?([A-Za-z0-9.-]+)"?\s+'
    r'secret:\s*"?([A-Za-z0-9+/=]+)"?')
ALGORITHMS = ("hmac-sha256", "hmac-sha384", "hmac-sha512", "hmac-sha224", "hmac-sha1")


class DnsError(KeysError):
    """No usable answer (unreachable, SERVFAIL, not validated) or a refused update."""


class Server(NamedTuple):
    address: str  # an IP address (asking a name of a resolver found by name proves nothing)
    port: int = DNS_PORT

    def text(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


def parse_server(text: str) -> Server:
    """``ADDRESS[:PORT]``, an IPv6 address in brackets when a port follows."""
    import ipaddress

    text = text.strip()
    host, port = text, str(DNS_PORT)
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"'{text}' is not ADDRESS[:PORT]")
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"'{text}': give the DNS server's IP address (ADDRESS[:PORT], "
                         "[IPv6]:PORT), not a name") from None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"'{text}': the port is not a number from 1 to 65535")
    return Server(str(address), int(port))


class Update(NamedTuple):
    """RFC 2136: where the zone's primary takes updates, and with which TSIG key."""

    key_file: str
    server: Server
    zone: str


class Dane(NamedTuple):
    """A target's TLSA gate (``tlsa =`` and the keys beside it)."""

    names: tuple[str, ...]
    server: Server | None = None  # None: /etc/resolv.conf's nameservers
    dnssec: bool = False  # only answers with the AD bit count
    grace_days: int = DEFAULT_GRACE_DAYS
    near_expiry: str = "switch"
    update: Update | None = None
    timeout: float = DEFAULT_TIMEOUT

    def describe(self) -> str:
        where = self.server.text() if self.server else "the system resolver"
        how = ", DNSSEC-validated answers only" if self.dnssec else ""
        upd = (f"; records published over RFC 2136 to {self.update.server.text()} (zone "
               f"{self.update.zone}, key {self.update.key_file})" if self.update else "")
        return (f"TLSA {', '.join(self.names)} asked of {where}{how} must vouch for a new "
                f"key before it is served; within {self.grace_days} days of the served "
                f"certificate's expiry: {self.near_expiry}{upd}")


class Answer(NamedTuple):
    name: str
    records: tuple[Tlsa, ...]
    ttl: int  # of the RRset; of the negative answer when there is none
    validated: bool  # the AD bit


def record_line(name: str, record: Tlsa) -> str:
    """A record as a zone file writes it."""
    return f"{name.rstrip('.')}. IN TLSA {record.text()}"


def next_record(chain: Sequence[bytes]) -> Tlsa:
    """The record to publish for ``chain``: DANE-EE, its key's SHA-256 (``3 1 1``)."""
    from certbot_atomic_deploy.tlsa import DANE_EE, Tlsa, association

    return Tlsa(DANE_EE, 1, 1, association(chain[0], 1, 1))


def vouching(answer: Answer, chain: Sequence[bytes]) -> list[Tlsa]:
    """The records of ``answer`` that vouch for a server presenting ``chain``."""
    from certbot_atomic_deploy.tlsa import matches

    return [r for r in answer.records if matches(r, chain)]


# -- asking

def _need_dnspython() -> None:
    """dnspython is an optional dependency (the ``dane`` extra): say so if it is missing."""
    try:
        import dns.version
    except ImportError:
        raise DnsError("tlsa = needs dnspython 2.1 or newer, which is not installed (apt "
                       "install python3-dnspython, dnf install python3-dns, or pip install "
                       "'certbot-daemon-keys[dane]')") from None
    if (dns.version.MAJOR, dns.version.MINOR) < (2, 1):
        raise DnsError(f"tlsa = needs dnspython 2.1 or newer; this is {dns.version.version} "
                       "(upgrade python3-dnspython)")


def _servers(dane: Dane) -> list[Server]:
    if dane.server is not None:
        return [dane.server]
    import dns.resolver

    try:
        resolver = dns.resolver.Resolver(configure=True)
    except Exception as exc:  # dnspython raises its own for an empty or unreadable file
        raise DnsError(f"/etc/resolv.conf: no nameserver to ask for TLSA records ({exc}); "
                       "set dns_server = ADDRESS[:PORT]") from None
    return [Server(str(ns), int(getattr(resolver, "port", DNS_PORT)))
            for ns in resolver.nameservers]


def _ask(message: dns.message.Message, server: Server, timeout: float,
         tcp: bool = False) -> dns.message.Message:
    import dns.query

    if tcp:
        return dns.query.tcp(message, server.address, timeout=timeout, port=server.port)
    answer = dns.query.udp(message, server.address, timeout=timeout, port=server.port)
    import dns.flags

    if answer.flags & dns.flags.TC:
        return dns.query.tcp(message, server.address, timeout=timeout, port=server.port)
    return answer


def lookup(dane: Dane, name: str) -> Answer:
    """``name``'s TLSA RRset as ``dane``'s server answers it; :class:`DnsError` if none
    answers usably (every server tried, in order)."""
    _need_dnspython()
    import dns.exception
    import dns.flags
    import dns.message
    import dns.rcode
    import dns.rdatatype

    last = "no server"
    for server in _servers(dane):
        query = dns.message.make_query(name, dns.rdatatype.TLSA, want_dnssec=dane.dnssec)
        query.flags |= dns.flags.AD  # RFC 6840 5.7: ask for the AD bit
        try:
            reply = _ask(query, server, dane.timeout)
        except (OSError, dns.exception.DNSException) as exc:
            last = (f"{server.text()} did not answer ({_reason(exc)}; is a DNS server "
                    "running there?)")
            continue
        rcode = reply.rcode()
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            last = f"{server.text()} answered {dns.rcode.to_text(rcode)}"
            continue
        validated = bool(reply.flags & dns.flags.AD)
        if dane.dnssec and not validated:
            raise DnsError(
                f"TLSA {name}: the answer of {server.text()} is not DNSSEC-validated (no AD "
                "bit), and dnssec = require: refused (ask a validating resolver on a trusted "
                "path, e.g. unbound on 127.0.0.1)")
        return _answer(reply, name, validated)
    raise DnsError(f"TLSA {name}: {last}")


def _answer(reply: dns.message.Message, name: str, validated: bool) -> Answer:
    import dns.name
    import dns.rdatatype

    from certbot_atomic_deploy.tlsa import Tlsa

    records: list[Tlsa] = []
    ttl = None
    # Only RRsets at the name asked, or where its CNAME chain leads (RFC 7671 allows
    # that), count: an answer may carry other owners' records, which vouch for nothing.
    owners = {dns.name.from_text(name)}
    grew = True
    while grew:
        grew = False
        for rrset in reply.answer:
            if rrset.rdtype == dns.rdatatype.CNAME and rrset.name in owners:
                target = rrset[0].target
                if target not in owners:
                    owners.add(target)
                    grew = True
    for rrset in reply.answer:
        if rrset.rdtype == dns.rdatatype.TLSA and rrset.name in owners:
            ttl = rrset.ttl
            records += [Tlsa(r.usage, r.selector, r.mtype, bytes(r.cert)) for r in rrset]
    if ttl is None:  # no RRset: resolvers cache that for the SOA's negative TTL
        ttl = min((min(rrset.ttl, rrset[0].minimum) for rrset in reply.authority
                   if rrset.rdtype == dns.rdatatype.SOA), default=0)
    return Answer(name, tuple(records), ttl, validated)


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]


# -- RFC 2136

def read_tsig(path: str) -> tuple[str, str, str]:
    """The TSIG key (name, algorithm, base64 secret) in ``path``: BIND's format
    (``tsig-keygen``, ``nsupdate -k``) or Knot's (``keymgr -t``). Refused unless only
    its owner (root, or the user running the deploy) can read it."""
    where = f"tlsa_update {path}"
    _, data = read_regular(path, limit=MAX_KEY_FILE_BYTES, where=where, error=ConfigError,
                           hint="write the zone's TSIG key there, e.g. tsig-keygen NAME > FILE",
                           check=file_check(where, ConfigError, readers="owner",
                                            stakes="the TSIG key can change the zone"))
    text = data.decode("utf-8", "replace")
    found = re.search(_BIND_KEY, text, re.S) or re.search(_KNOT_KEY, text)
    if found is None:
        raise ConfigError(f"{where}: no TSIG key in it (expected key \"NAME\" {{ algorithm "
                          "hmac-sha256; secret \"BASE64\"; }; as tsig-keygen writes it)")
    name, algorithm, secret = found.groups()
    if algorithm.lower() not in ALGORITHMS:
        raise ConfigError(f"{where}: algorithm {algorithm} is not one of "
                          f"{', '.join(ALGORITHMS)}")
    return name, algorithm.lower(), secret


def update(spec: Update, name: str, ttl: int, add: Sequence[Tlsa] = (),
           delete: Sequence[Tlsa] = ()) -> None:
    """Add and delete TLSA records of ``name`` in one signed update (over TCP)."""
    _need_dnspython()
    import dns.exception
    import dns.name
    import dns.rcode
    import dns.rdata
    import dns.rdataclass
    import dns.rdatatype
    import dns.tsigkeyring
    import dns.update

    key_name, algorithm, secret = read_tsig(spec.key_file)
    keyring = dns.tsigkeyring.from_text({key_name: secret})
    message = dns.update.Update(spec.zone, keyring=keyring,
                                keyname=dns.name.from_text(key_name),
                                keyalgorithm=dns.name.from_text(algorithm))
    owner = dns.name.from_text(name)  # absolute: a str would be taken relative to the zone
    for record in delete:
        message.delete(owner, _rdata(record))
    for record in add:
        message.add(owner, ttl, _rdata(record))
    what = (f"RFC 2136 update of {name} at {spec.server.text()} (zone {spec.zone}, key "
            f"{key_name})")
    try:
        reply = _ask(message, spec.server, DEFAULT_TIMEOUT, tcp=True)
    except (OSError, dns.exception.DNSException) as exc:
        raise DnsError(f"{what}: {_reason(exc)}; the switch stays pending") from None
    if reply.rcode() != dns.rcode.NOERROR:
        raise DnsError(f"{what}: refused ({dns.rcode.to_text(reply.rcode())}); check the "
                       "key and the zone's update policy")


def _rdata(record: Tlsa) -> object:
    import dns.rdata
    import dns.rdataclass
    import dns.rdatatype

    return dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TLSA, record.text())


def at_primary(spec: Update, name: str) -> Answer:
    """``name``'s TLSA RRset as the zone's primary has it (its TTL is what caches hold)."""
    return lookup(Dane((name,), server=spec.server), name)


# -- the gate: what a run does with a target's switch

class Served(NamedTuple):
    """What the target serves now (its current record), as the gate needs it."""

    version: int
    seq: int
    not_after: datetime.datetime
    chain: Sequence[bytes] | None  # None: no longer in the archive (nothing to retire)


class Decision(NamedTuple):
    go: bool  # switch now
    status: str  # "go", or the outcome of a held switch: "held" (exit 1), "waiting" (0)
    detail: str  # one line: why held, or a warning to add to the published outcome
    state: DaneState | None  # what the target's state keeps


def parse_time(text: str) -> datetime.datetime:
    """An ISO 8601 time from the state (UTC when it names no zone)."""
    when = datetime.datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=datetime.timezone.utc)


def _iso(when: datetime.datetime) -> str:
    return when.astimezone(datetime.timezone.utc).isoformat(timespec="seconds")


def gate(spec: Dane, version: int, chain: Sequence[bytes], kept: DaneState | None,
         served: Served | None, now: datetime.datetime, dry_run: bool = False) -> Decision:
    """May a target switch to archive version ``version`` (``chain``: DER, leaf first)?

    ``kept``: what an earlier run held or scheduled; ``served``: what the target
    serves now, or None. Asks DNS (and, with ``spec.update``, adds the new key's
    record at the zone's primary unless ``dry_run``); never sleeps.
    """
    if spec.update is not None:
        read_tsig(spec.update.key_file)  # a bad key file: this target fails, nothing asked
    kept = kept or DaneState()
    ours = kept.held == version
    since = kept.since if ours and kept.since else _iso(now)
    near = _near_expiry(spec, served, now)

    def hold(status: str, detail: str, publish: tuple[str, ...],
             switch_after: str | None = None) -> Decision:
        if near and spec.near_expiry == "switch":
            return Decision(True, "go", f"{detail}; switched anyway: {near} "
                                        "(tlsa_near_expiry = switch)", None)
        if near:
            detail += f"; {near}, and tlsa_near_expiry = hold keeps it"
        return Decision(False, status, detail, kept._replace(
            held=version, since=since, detail=detail, publish=publish,
            switch_after=switch_after))

    if ours and kept.switch_after and now < parse_time(kept.switch_after):
        return hold("waiting", f"TLSA records for v{version} added; every cache has them "
                               f"after {kept.switch_after} (the TTL): the switch waits till "
                               "then", kept.publish, kept.switch_after)
    try:
        answers = [lookup(spec, name) for name in spec.names]
    except DnsError as exc:
        return hold("held", f"{exc}; nothing switched (every later run asks again)",
                    kept.publish if ours else ())
    record = next_record(chain)
    missing = [a.name for a in answers if not vouching(a, chain)]
    publish = tuple(record_line(name, record) for name in missing)
    if not missing:
        return Decision(True, "go", "", _retire_plan(spec, answers, chain, served, now))
    if spec.update is not None and not (ours and kept.switch_after):
        if dry_run:
            return hold("held", f"would add {'; '.join(publish)} over RFC 2136", publish)
        wait = 0
        for name in missing:
            before = at_primary(spec.update, name)
            update(spec.update, name, before.ttl if before.records else DEFAULT_TTL,
                   add=[record])
            wait = max(wait, before.ttl)
        loud = (f" (the TTL, {wait} s, is over the {MAX_WAIT} s any common resolver "
                "keeps an answer: waiting that long)" if wait > MAX_WAIT else "")
        after = _iso(now + datetime.timedelta(seconds=min(wait, MAX_WAIT) + 1))
        return hold("waiting", f"added {'; '.join(publish)} over RFC 2136; the switch "
                               f"waits till every cache has it, after {after}{loud}",
                    publish, after)
    names = ", ".join(missing)
    return hold("held", f"TLSA {names} does not vouch for v{version} (publish: "
                        f"{'; '.join(publish)}; every later run asks again)", publish,
                kept.switch_after if ours else None)


def check_served(spec: Dane, version: int, chain: Sequence[bytes]) -> list[tuple[bool, str]]:
    """Do the records published now vouch for what a target serves (archive version
    ``version``, ``chain``)? The gate asks only at a switch; this asks any time (a
    record removed later, a zone rolled back). For each name: whether it does, and a line."""
    said = []
    for name in spec.names:
        try:
            found = vouching(lookup(spec, name), chain)
        except DnsError as exc:
            said.append((False, f"{exc}; not checked"))
            continue
        if found:
            said.append((True, f"TLSA {name} vouches for the served v{version} "
                               f"({found[0].text()})"))
        else:
            said.append((False, f"TLSA {name} does not vouch for the served v{version}: "
                                "DANE senders defer mail to it (publish: "
                                f"{record_line(name, next_record(chain))})"))
    return said


def _near_expiry(spec: Dane, served: Served | None, now: datetime.datetime) -> str:
    if served is None:  # what the daemon serves is not ours to know: no grace
        return ""
    left = served.not_after - now
    if left <= datetime.timedelta(days=spec.grace_days):
        days = left.total_seconds() / 86400
        return (f"the served v{served.version} expired {-days:.1f} days ago" if days < 0 else
                f"the served v{served.version} expires in {days:.1f} days (tlsa_grace_days "
                f"= {spec.grace_days})")
    return ""


def _retire_plan(spec: Dane, answers: list[Answer], chain: Sequence[bytes],
                 served: Served | None, now: datetime.datetime) -> DaneState | None:
    """With RFC 2136: the records that vouch for the served material but not the new,
    to remove once no cache can still hold them (after the switch and a TTL)."""
    if spec.update is None or served is None or served.chain is None:
        return None
    retire: list[str] = []
    wait = 0
    for answer in answers:
        at = at_primary(spec.update, answer.name)
        old = [r for r in at.records if r in vouching(at, served.chain)
               and r not in vouching(at, chain)]
        retire += [f"{answer.name} {r.text()}" for r in old]
        wait = max(wait, at.ttl)
    if not retire:
        return None
    return DaneState(retire=tuple(retire), retire_for=served.seq,
                     retire_after=_iso(now + datetime.timedelta(seconds=min(wait, MAX_WAIT) + 1)))


def retire(spec: Dane, kept: DaneState, seq: int | None, settled: bool,
           now: datetime.datetime) -> tuple[DaneState | None, str]:
    """Remove the old material's records once due: the target serves the publish that
    followed ``retire_for`` (``seq``, its current record, with nothing pending:
    ``settled``) and a TTL has passed. Returns what to keep and a line to report."""
    if not kept.retire or spec.update is None:
        return kept, ""
    if seq is None or seq == kept.retire_for:
        return kept._replace(retire=(), retire_after=None, retire_for=None), (
            "the switch was rolled back: the old records stay")
    if not settled or (kept.retire_after and now < parse_time(kept.retire_after)):
        return kept, ""
    from certbot_atomic_deploy.tlsa import Tlsa

    by_name: dict[str, list[Tlsa]] = {}
    for line in kept.retire:
        name, usage, selector, mtype, data = line.split()
        by_name.setdefault(name, []).append(
            Tlsa(int(usage), int(selector), int(mtype), bytes.fromhex(data)))
    for name, records in by_name.items():
        update(spec.update, name, 0, delete=records)
    return kept._replace(retire=(), retire_after=None, retire_for=None), (
        f"removed {'; '.join(kept.retire)} over RFC 2136 (the old key's, a TTL after "
        "the switch)")

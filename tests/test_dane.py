"""The DANE gate (issue 15): a target never switches to a key its TLSA records do not vouch for.

Real parts: Knot from Debian serving a signed test zone on a loopback port and taking
TSIG-signed RFC 2136 updates, Unbound validating with the zone's key as its only trust
anchor, a real Postfix serving what is published, ``openssl s_client -dane_tlsa_*`` as the
DANE-validating sender, and the real ``certbot-atomic-deploy`` CLI. Records the tests
expect are computed with openssl, never with the code under test.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.support.daemons import postfix
from tests.support.dns import TTL, ZONE, Knot, knot, unbound, write_tsig_key
from tests.support.site import basic_conf, deploy, new_version, one_line
from tests.support.testbed import free_port
from tests.test_fleet import Fleet, _postfix_bytes

pytestmark = [pytest.mark.root, pytest.mark.daemon, pytest.mark.dane]

MX = f"_25._tcp.mx.{ZONE}"


def spki_sha256(cert_pem: bytes) -> str:
    """SHA-256 of a certificate's SubjectPublicKeyInfo, by openssl (a 3 1 1 or 2 1 1)."""
    pub = subprocess.run(["openssl", "x509", "-pubkey", "-noout"], input=cert_pem,
                         capture_output=True, check=True, timeout=30).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub,
                         capture_output=True, check=True, timeout=30).stdout
    return hashlib.sha256(der).hexdigest()


def ee(site: Path, version: int) -> str:
    """The 3 1 1 record data of the lineage's version N."""
    return "3 1 1 " + spki_sha256((site / f"le/archive/mail/cert{version}.pem").read_bytes())


def ta(site: Path, version: int) -> str:
    """The 2 1 1 record data of the CA that issued version N (its intermediate)."""
    return "2 1 1 " + spki_sha256((site / f"le/archive/mail/chain{version}.pem").read_bytes())


def published(site: Path) -> bytes:
    return (site / "out/mail.pem").read_bytes()


def version_bytes(site: Path, version: int) -> bytes:
    archive = site / "le/archive/mail"
    return (archive / f"privkey{version}.pem").read_bytes() + (
        archive / f"fullchain{version}.pem").read_bytes()


def dane_conf(site: Path, server: str, extra: str = "") -> Path:
    return basic_conf(site, f"tlsa = {MX}\ndns_server = {server}\n{extra}")


def run(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return deploy(site / "le", *args)


def status(site: Path) -> dict[str, object]:
    rows = json.loads(run(site, "status", "--json").stdout)
    assert isinstance(rows, list)
    return next(r for r in rows if r["target"] == "postfix")


def add_record(server: Knot, data: str, owner: str = MX, verb: str = "add") -> None:
    """Publish (or with ``verb="delete"`` remove) a record the way an operator would:
    knsupdate with the zone's TSIG key."""
    script = (f"server 127.0.0.1 {server.port}\nzone {ZONE}.\n"
              f"update {verb} {owner}. {TTL} TLSA {data}\nsend\n")
    subprocess.run(["knsupdate", "-y", f"hmac-sha256:atomic-deploy:{server.secret}"],
                   input=script, text=True, check=True, capture_output=True, timeout=30)
    time.sleep(TTL + 1)  # what a cache could hold has expired


def dane_verifies(port: int, data: str) -> bool:
    """Does a DANE-validating sender (openssl s_client) accept what Postfix serves, with
    ``data`` as the only TLSA record? (``-brief`` prints "Verification: OK" when it does)"""
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-starttls", "smtp",
         "-dane_tlsa_domain", "mx.example.test", "-dane_tlsa_rrdata", data,
         # RFC 7672 3.1.1: no name checks for DANE-EE (what Postfix's own client does)
         "-dane_ee_no_namechecks", "-verify_return_error", "-brief"],
        input="QUIT\r\n", capture_output=True, text=True, timeout=30)
    return done.returncode == 0 and "Verification: OK" in done.stderr


def test_a_key_no_record_vouches_for_is_held_until_its_record_appears(
        site: Path, open_tmp: Path) -> None:
    first = ee(site, 1)
    with knot(open_tmp / "knot", [f"_25._tcp.mx 3600 IN TLSA {first}"]) as dns, \
            postfix(open_tmp / "postfix", f"{site}/out/mail.pem") as daemon:
        dane_conf(site, dns.server(), f"reload = {daemon.reload}")
        assert run(site, "deploy", "--lineage", "mail").returncode == 0  # v1: vouched for
        assert dane_verifies(daemon.port, first)

        new_version(site, 2)
        held = run(site, "deploy", "--lineage", "mail")
        assert held.returncode == 1
        line = one_line(held)
        assert "[postfix]" in line and "does not vouch for v2" in line
        assert f"{MX}. IN TLSA {ee(site, 2)}" in line  # the record to publish
        assert published(site) == version_bytes(site, 1)
        assert dane_verifies(daemon.port, first)  # DANE senders still deliver
        row = status(site)
        assert row["tlsa_held"] == 2 and row["in_sync"] is False
        assert row["tlsa_publish"] == [f"{MX}. IN TLSA {ee(site, 2)}"]
        prom = run(site, "status", "--prometheus").stdout
        assert 'certbot_atomic_deploy_target_tlsa_held{target="postfix"} 1' in prom
        assert f'record="{MX}. IN TLSA {ee(site, 2)}"' in prom
        printed = run(site, "tlsa").stdout.splitlines()  # what to publish, under tlsa =
        assert printed[:2] == [
            "; mail v2: the lineage's newest; the switch of [postfix] to it waits for one of "
            "these records", f"{MX}. IN TLSA {ee(site, 2)}"]

        add_record(dns, ee(site, 2))
        went = run(site, "deploy", "--lineage", "mail")
        assert went.returncode == 0, went.stderr
        assert published(site) == version_bytes(site, 2)
        assert dane_verifies(daemon.port, ee(site, 2))
        assert not dane_verifies(daemon.port, first)
        assert status(site)["tlsa_held"] is None
        assert 'certbot_atomic_deploy_target_tlsa_held{target="postfix"} 0' in run(
            site, "status", "--prometheus").stdout


def test_tlsa_check_says_when_the_records_stop_vouching_for_what_is_served(
        site: Path, open_tmp: Path) -> None:
    with knot(open_tmp / "knot", [f"_25._tcp.mx 3600 IN TLSA {ee(site, 1)}"]) as dns:
        dane_conf(site, dns.server())
        assert run(site, "deploy", "--all").returncode == 0
        fine = run(site, "tlsa", "--check")
        assert fine.returncode == 0, fine.stderr
        assert fine.stdout == f"[postfix] TLSA {MX} vouches for the served v1 ({ee(site, 1)})\n"
        assert run(site, "tlsa", "--check", "--lineage", "mail").stdout == fine.stdout

        add_record(dns, ee(site, 1), verb="delete")  # removed by someone, after the switch
        gone = run(site, "tlsa", "--check")
        assert gone.returncode == 1
        line = one_line(gone)
        assert f"[postfix] TLSA {MX} does not vouch for the served v1" in line
        assert f"{MX}. IN TLSA {ee(site, 1)}" in line  # what to publish again
        assert published(site) == version_bytes(site, 1)  # a check changes nothing
    down = run(site, "tlsa", "--check")  # the DNS server stopped
    assert down.returncode == 1 and "did not answer" in one_line(down)


def test_reload_pending_retries_a_held_switch(site: Path, open_tmp: Path) -> None:
    with knot(open_tmp / "knot", [f"_25._tcp.mx 3600 IN TLSA {ee(site, 1)}"]) as dns:
        dane_conf(site, dns.server())
        assert run(site, "deploy", "--all").returncode == 0
        new_version(site, 2)
        assert run(site, "deploy", "--all").returncode == 1
        add_record(dns, ee(site, 2))
        # certbot's post-hook (or the hourly timer) runs reload-pending, not a deploy
        retried = run(site, "reload-pending")
        assert retried.returncode == 0, retried.stderr
        assert published(site) == version_bytes(site, 2)


def test_usage_2_vouches_through_the_ca_in_the_published_chain(
        site: Path, open_tmp: Path) -> None:
    new_version(site, 2)
    with knot(open_tmp / "knot", [f"_25._tcp.mx 3600 IN TLSA {ta(site, 2)}"]) as dns:
        dane_conf(site, dns.server())
        went = run(site, "deploy", "--all")
        assert went.returncode == 0, went.stderr
        assert published(site) == version_bytes(site, 2)


def test_a_record_of_another_ca_does_not_vouch(site: Path, open_tmp: Path) -> None:
    records = [f"_25._tcp.mx 3600 IN TLSA {ta(site, 1)}"]  # v1's CA; v2 has another
    with knot(open_tmp / "knot", records) as dns:
        dane_conf(site, dns.server())
        assert run(site, "deploy", "--all").returncode == 0  # v1, through its CA
        new_version(site, 2)
        held = run(site, "deploy", "--all")
        assert held.returncode == 1 and "does not vouch for v2" in one_line(held)
        assert published(site) == version_bytes(site, 1)


def test_rfc2136_rollover_adds_waits_switches_and_retires(site: Path, open_tmp: Path) -> None:
    with knot(open_tmp / "knot", [f"_25._tcp.mx {TTL} IN TLSA {ee(site, 1)}"]) as dns:
        key = write_tsig_key(open_tmp / "tsig.key", dns.secret)
        dane_conf(site, dns.server(), f"tlsa_update = {key}\ntlsa_update_server = "
                                      f"{dns.server()}\ntlsa_zone = {ZONE}")
        assert run(site, "deploy", "--all").returncode == 0
        new_version(site, 2)

        added = run(site, "deploy", "--all")
        assert added.returncode == 0, added.stderr  # waiting is not a failure
        assert "waiting" in added.stdout and "added" in added.stdout
        assert dns.tlsa(MX) == sorted([ee(site, 1), ee(site, 2)])
        assert published(site) == version_bytes(site, 1)  # caches may not have it yet
        assert run(site, "deploy", "--all").returncode == 0
        assert published(site) == version_bytes(site, 1)  # still within the TTL

        time.sleep(TTL + 2)
        switched = run(site, "deploy", "--all")
        assert switched.returncode == 0, switched.stderr
        assert published(site) == version_bytes(site, 2)
        assert dns.tlsa(MX) == sorted([ee(site, 1), ee(site, 2)])  # old kept a TTL more
        assert status(site)["tlsa_retire"] == [f"{MX} {ee(site, 1)}"]

        time.sleep(TTL + 2)
        retired = run(site, "deploy", "--all")
        assert retired.returncode == 0, retired.stderr
        assert "removed" in retired.stdout
        assert dns.tlsa(MX) == [ee(site, 2)]
        assert status(site)["tlsa_retire"] == []


@pytest.mark.parametrize("mode, owner, message", [
    (0o644, 0, "mode 0644 lets others read it"),
    (0o600, 65534, "owned by uid 65534, not root"),
])
def test_a_tsig_key_others_can_read_or_own_is_refused_for_its_own_target_only(
        site: Path, open_tmp: Path, mode: int, owner: int, message: str) -> None:
    key = write_tsig_key(open_tmp / "tsig.key", "c2VjcmV0", mode=mode)
    os.chown(key, owner, owner)
    conf = dane_conf(site, "127.0.0.1:53", f"tlsa_update = {key}\ntlsa_update_server = "
                                           f"127.0.0.1:53\ntlsa_zone = {ZONE}")
    conf.write_text(conf.read_text() + f"[plain]\nlineage = mail\npath = {site}/out/plain.pem"
                                       "\nformat = postfix\n")
    result = run(site, "deploy", "--all")
    assert result.returncode == 2
    line = one_line(result)
    assert line.startswith("certbot-atomic-deploy: [postfix]") and message in line, line
    assert not (site / "out/mail.pem").exists()
    assert (site / "out/plain.pem").exists()  # the other target is not held by it


@pytest.mark.parametrize("rule, switched", [("switch", True), ("hold", False)])
def test_near_the_served_certificates_expiry_the_grace_rule_decides(
        site: Path, open_tmp: Path, rule: str, switched: bool) -> None:
    with knot(open_tmp / "knot", [f"_25._tcp.mx 3600 IN TLSA {ee(site, 1)}"]) as dns:
        # v1 expires in 90 days: a 120-day grace puts it within the rule's reach
        dane_conf(site, dns.server(), f"tlsa_grace_days = 120\ntlsa_near_expiry = {rule}")
        assert run(site, "deploy", "--all").returncode == 0
        new_version(site, 2)
        result = run(site, "deploy", "--all")
        if switched:
            assert result.returncode == 0, result.stderr
            assert "switched without a TLSA record" in result.stdout
            warning = one_line(result)  # on stderr, though the run succeeded
            assert "WARNING: [postfix] TLSA" in warning and "switched anyway: the served " \
                "v1 expires in" in warning
            assert published(site) == version_bytes(site, 2)
        else:
            assert result.returncode == 1
            assert "tlsa_near_expiry = hold keeps it" in one_line(result)
            assert published(site) == version_bytes(site, 1)


def test_a_dns_server_that_is_down_holds_the_switch(site: Path, open_tmp: Path) -> None:
    with knot(open_tmp / "knot", [f"_25._tcp.mx 3600 IN TLSA {ee(site, 1)}"]) as dns:
        dane_conf(site, dns.server())
        assert run(site, "deploy", "--all").returncode == 0
    new_version(site, 2)
    dane_conf(site, f"127.0.0.1:{free_port()}")
    held = run(site, "deploy", "--all")
    assert held.returncode == 1
    assert "did not answer" in one_line(held)
    assert published(site) == version_bytes(site, 1)
    assert status(site)["tlsa_held"] == 2


def test_a_validated_answer_switches_and_a_forged_one_is_refused(
        site: Path, open_tmp: Path) -> None:
    new_version(site, 2)
    record = f"_25._tcp.mx 3600 IN TLSA {ee(site, 2)}"
    with knot(open_tmp / "signed", [record]) as real, \
            knot(open_tmp / "forger", [record], signed=False) as forger:
        anchor = real.dnskey()

        def refused(server: str, why: str) -> None:
            dane_conf(site, server, "dnssec = require")
            done = run(site, "deploy", "--all")
            assert done.returncode == 1 and why in one_line(done)
            assert not (site / "out/mail.pem").exists()

        # the forger answers directly: its answer matches, but nothing validated it
        refused(forger.server(), "not DNSSEC-validated")
        # a validating resolver sent to the forger: bogus, SERVFAIL
        with unbound(open_tmp / "fooled", forger, anchor) as resolver:
            refused(resolver, "SERVFAIL")
        # the same resolver sent to the signed zone: validated, the switch goes
        with unbound(open_tmp / "validating", real, anchor) as resolver:
            dane_conf(site, resolver, "dnssec = require")
            went = run(site, "deploy", "--all")
            assert went.returncode == 0, went.stderr
            assert published(site) == version_bytes(site, 2)


def test_a_hosts_push_waits_for_the_record_of_that_host(site: Path, run_dir: Path) -> None:
    """Two MX hosts behind ssh, each with its own TLSA name: the one whose record for the
    new key is published gets it; the other keeps the old key (its receiver is sent
    nothing) until its record appears, and reload-pending then pushes it."""
    owners = [f"_25._tcp.mx{i}.{ZONE}" for i in range(2)]
    records = [f"{o}. 3600 IN TLSA {ee(site, 1)}" for o in owners]
    with ExitStack() as stack:
        dns = stack.enter_context(knot(run_dir / "knot", records))
        fleet = Fleet(run_dir, site / "le", 2, stack, defaults=f"dns_server = {dns.server()}")
        conf = fleet.conf.read_text()
        for i, owner in enumerate(owners):
            conf = conf.replace(f"[h{i}]\n", f"[h{i}]\ntlsa = {owner}\n")
        fleet.conf.write_text(conf)
        assert deploy(site / "le", "deploy", "--all").returncode == 0
        old = _postfix_bytes(site / "le")
        new_version(site, 2)
        add_record(dns, ee(site, 2), owners[0])
        done = deploy(site / "le", "deploy", "--all")
        assert done.returncode == 1
        assert "[h1]" in one_line(done) and f"{owners[1]}. IN TLSA {ee(site, 2)}" in one_line(done)
        new = _postfix_bytes(site / "le")
        assert [fleet.published(i) for i in range(2)] == [new, old]
        assert fleet.status()["h1"]["tlsa_held"] == 2
        add_record(dns, ee(site, 2), owners[1])
        retried = deploy(site / "le", "reload-pending")
        assert retried.returncode == 0, retried.stderr
        assert [fleet.published(i) for i in range(2)] == [new, new]

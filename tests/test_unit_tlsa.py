"""DANE TLSA records: what ``tlsa`` prints, checked against OpenSSL's own digests, and the
matching rules a record is judged by (usage 3 the leaf, usage 2 a CA in the chain).

Unit tier: as the user running the tests, in their own temp dir, no network.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certbot_atomic_deploy import cli
from certbot_atomic_deploy.tlsa import DANE_EE, DANE_TA, Tlsa, association, matches, records_for
from tests.support.pki import make_chain, new_key, pem_of
from tests.support.site import make_site, run_main, write_lineage

ME_CONF = "[postfix]\nlineage = mail\npath = {out}/mail.pem\nformat = postfix\nowner = {uid}\n"


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _openssl_spki_sha256(cert: x509.Certificate) -> str:
    """3 1 1 as operators compute it: openssl x509 -pubkey | openssl pkey -pubin -outform
    DER | openssl dgst -sha256."""
    pem = cert.public_bytes(serialization.Encoding.PEM)
    pub = subprocess.run(["openssl", "x509", "-noout", "-pubkey"], input=pem,
                         capture_output=True, check=True, timeout=30).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub,
                         capture_output=True, check=True, timeout=30).stdout
    digest = subprocess.run(["openssl", "dgst", "-sha256", "-r"], input=der,
                            capture_output=True, check=True, timeout=30).stdout
    return digest.split()[0].decode()


@pytest.mark.parametrize("kind", ["ec", "rsa", "ed25519"])
def test_3_1_1_and_2_1_1_are_the_spki_digests_openssl_gives(kind: str) -> None:
    _, chain = make_chain(["mx.example.org"], issuer_kind=kind)
    records = records_for([_der(c) for c in chain])
    assert [r.text() for r in records] == [
        f"3 1 1 {_openssl_spki_sha256(chain[0])}", f"2 1 1 {_openssl_spki_sha256(chain[1])}"]


def test_a_record_matches_its_own_certificate_in_every_selector_and_type() -> None:
    _, chain = make_chain(["mx.example.org"])
    ders = [_der(c) for c in chain]
    for selector in (0, 1):
        for mtype in (0, 1, 2):
            ee = Tlsa(DANE_EE, selector, mtype, association(ders[0], selector, mtype))
            ta = Tlsa(DANE_TA, selector, mtype, association(ders[1], selector, mtype))
            assert matches(ee, ders) and matches(ta, ders)
            # usage 3 names the leaf, usage 2 a CA: swapped, neither matches
            assert not matches(ee._replace(usage=DANE_TA), ders)
            assert not matches(ta._replace(usage=DANE_EE), ders)


def test_a_record_of_another_key_or_an_unsupported_kind_matches_nothing() -> None:
    _, chain = make_chain(["mx.example.org"])
    _, other = make_chain(["mx.example.org"])
    ders = [_der(c) for c in chain]
    theirs = records_for([_der(c) for c in other])
    assert not any(matches(r, ders) for r in theirs)
    ours = records_for(ders)[0]
    for usage in (0, 1):  # PKIX-TA, PKIX-EE: not for SMTP (RFC 7672)
        assert not matches(ours._replace(usage=usage), ders)
    assert not matches(ours._replace(selector=2), ders)
    assert not matches(ours._replace(mtype=3), ders)


def test_tlsa_prints_the_newest_version_and_the_one_each_target_holds(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before a key switch: the records of the version not yet published (to publish
    now) and of the version served (to keep until the switch); a renewal that keeps its
    key (--reuse-key) keeps its 3 1 1, and only that."""
    site = make_site(tmp_path)
    le = site / "le"
    (le / "atomic-deploy.conf").write_text(ME_CONF.format(out=site / "out", uid=os.geteuid()))
    assert run_main(capsys, cli.main, "--config-dir", str(le), "deploy", "--all")[0] == 0
    v1 = [x509.load_pem_x509_certificate((le / "live" / "mail" / f"{kind}.pem").read_bytes())
          for kind in ("cert", "chain")]  # one certificate each (cryptography 38 has no
    # load_pem_x509_certificates)
    key = new_key("ec")
    _, v2 = make_chain(["mail.example.org"], key=key)
    write_lineage(le, "mail", 2, pem_of(key), v2)
    _, v3 = make_chain(["mail.example.org"], key=key)  # the same key, reused
    write_lineage(le, "mail", 3, pem_of(key), v3)
    code, out, err = run_main(capsys, cli.main, "--config-dir", str(le), "tlsa")
    assert code == 0, err
    owner = "_25._tcp.mail.example.org. IN TLSA"
    assert out.splitlines() == [
        "; mail v3: the lineage's newest",
        f"{owner} 3 1 1 {_openssl_spki_sha256(v3[0])}",
        f"{owner} 2 1 1 {_openssl_spki_sha256(v3[1])}",
        "; mail v1: held by [postfix]",
        f"{owner} 3 1 1 {_openssl_spki_sha256(v1[0])}",
        f"{owner} 2 1 1 {_openssl_spki_sha256(v1[1])}"]
    assert _openssl_spki_sha256(v3[0]) == _openssl_spki_sha256(v2[0])  # key reused
    code, out, _ = run_main(capsys, cli.main, "--config-dir", str(le), "tlsa", "--name",
                            "_25._tcp.mx1.example.org", "--lineage", "mail")
    assert code == 0 and out.splitlines()[1].startswith("_25._tcp.mx1.example.org. IN TLSA 3 1 1")

"""Validation on made-up material: pair, chain, validity, names; both issuer checks.

Unit tier: runs as any user, no network. The chain's signatures are checked by
cryptography's own ``verify_directly_issued_by`` where it has it (40 and newer)
and by :func:`check_signature` before that; both are run here on every key type
a CA uses, whatever the installed release, so each row tests both paths.
"""
from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from pathlib import Path

import cryptography
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from certbot_atomic_deploy.pem import parse_blocks, read_lineage
from certbot_atomic_deploy.validate import (
    check_signature,
    covers,
    require_covered,
    validate,
    verify_issued_by,
)
from daemon_keys.errors import ValidationError
from tests.support.pki import make_chain, material, new_key, pem_of
from tests.support.site import write_lineage

NATIVE = hasattr(x509.Certificate, "verify_directly_issued_by")


def _native(child: x509.Certificate, parent: x509.Certificate) -> None:
    if not NATIVE:
        pytest.skip(f"cryptography {cryptography.__version__} has no verify_directly_issued_by")
    child.verify_directly_issued_by(parent)


CHECKS: dict[str, Callable[[x509.Certificate, x509.Certificate], None]] = {
    "native": _native, "fallback": check_signature, "chosen": verify_issued_by}


@pytest.mark.parametrize("check", sorted(CHECKS))
@pytest.mark.parametrize("kind", ["ec", "rsa", "ed25519"])
def test_a_real_issuer_passes_each_check(check: str, kind: str) -> None:
    _key, (leaf, inter) = make_chain(["a.example.org"], issuer_kind=kind)
    CHECKS[check](leaf, inter)


@pytest.mark.parametrize("check", sorted(CHECKS))
@pytest.mark.parametrize("kind", ["ec", "rsa", "ed25519"])
def test_the_right_issuer_name_with_another_key_fails_each_check(check: str, kind: str) -> None:
    _key, (leaf, _inter) = make_chain(["a.example.org"], issuer_kind=kind)
    _other, (_leaf, forged_inter) = make_chain(["a.example.org"], issuer_kind=kind)
    assert leaf.issuer == forged_inter.subject  # only the signature tells them apart
    with pytest.raises(InvalidSignature):
        CHECKS[check](leaf, forged_inter)


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_another_issuer_name_fails_each_check(check: str) -> None:
    _key, (leaf, inter) = make_chain(["a.example.org"])
    with pytest.raises(ValueError, match=r"(?i)issuer"):
        CHECKS[check](inter, leaf)


def test_a_fit_lineage_validates_and_reports_its_names() -> None:
    key, chain = make_chain(["mail.example.org", "smtp.example.org"])
    info = validate(material(key, chain))
    assert info.names == ("mail.example.org", "smtp.example.org")
    assert info.serial == f"{chain[0].serial_number:x}"


def test_a_key_of_another_certificate_is_refused() -> None:
    _key, chain = make_chain(["mail.example.org"])
    with pytest.raises(ValidationError, match=r"privkey1\.pem: the key does not match"):
        validate(material(new_key(), chain))


def test_a_chain_whose_intermediate_did_not_sign_the_leaf_is_refused() -> None:
    key, (leaf, _inter) = make_chain(["mail.example.org"])
    _other, (_leaf, forged) = make_chain(["mail.example.org"])
    with pytest.raises(ValidationError) as err:
        validate(material(key, [leaf, forged]))
    assert "fullchain1.pem: certificate 1 (CN=mail.example.org) is not issued by certificate 2" \
        in str(err.value)


@pytest.mark.parametrize("days,message", [
    ((-90, -1), "cert1.pem: expired"), ((1, 90), "cert1.pem: not valid before")])
def test_a_leaf_outside_its_validity_is_refused(days: tuple[int, int], message: str) -> None:
    key, chain = make_chain(["mail.example.org"], days_valid=days)
    with pytest.raises(ValidationError, match=message):
        validate(material(key, chain))


def test_validity_is_judged_at_the_moment_given() -> None:
    key, chain = make_chain(["mail.example.org"], days_valid=(-1, 90))
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=91)
    with pytest.raises(ValidationError, match="expired"):
        validate(material(key, chain), later)


def test_an_encrypted_key_is_refused_with_how_to_decrypt_it() -> None:
    key, chain = make_chain(["mail.example.org"])
    encrypted = key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.BestAvailableEncryption(b"pw"))
    mat = material(key, chain)._replace(key=parse_blocks(encrypted, "key")[0])
    with pytest.raises(ValidationError, match=r"the key is encrypted.*openssl pkey"):
        validate(mat)


@pytest.mark.parametrize("names,pattern,expected", [
    (["mail.example.org"], "mail.example.org", True),
    (["mail.example.org"], "MAIL.example.org", True),
    (["mail.example.org"], "*.example.org", True),
    (["*.example.org"], "*.example.org", True),
    (["mail.example.org"], "smtp.example.org", False),
    (["mail.example.org"], "*.example.com", False),
    # a wildcard certificate covers the hosts one label below it (RFC 6125)
    (["*.example.org"], "mail.example.org", True),
    (["*.example.org"], "MAIL.Example.org", True),
    (["*.example.org"], "a.b.example.org", False),
    (["*.example.org"], "example.org", False),
    (["*.example.org"], ".example.org", False),
])
def test_domain_globs(names: list[str], pattern: str, expected: bool) -> None:
    assert covers(names, pattern) is expected


def test_an_uncovered_domain_names_what_the_leaf_has() -> None:
    key, chain = make_chain(["mail.example.org"])
    info = validate(material(key, chain))
    with pytest.raises(ValidationError, match="does not cover 'imap.example.org' "
                                              r"\(it names mail.example.org\)"):
        require_covered(info, ["imap.example.org"], "[dovecot]")


def test_a_lineage_on_disk_reads_as_one_version(tmp_path: Path) -> None:
    key, chain = make_chain(["mail.example.org"])
    write_lineage(tmp_path, "mail", 1, pem_of(key), chain)
    key2, chain2 = make_chain(["mail.example.org"])
    write_lineage(tmp_path, "mail", 2, pem_of(key2), chain2)
    read = read_lineage(str(tmp_path), "mail")
    assert read.version == 2 and read.key.text == pem_of(key2)
    assert validate(read).serial == f"{chain2[0].serial_number:x}"


def test_links_into_two_versions_are_a_renewal_under_way(tmp_path: Path) -> None:
    key, chain = make_chain(["mail.example.org"])
    write_lineage(tmp_path, "mail", 1, pem_of(key), chain)
    write_lineage(tmp_path, "mail", 2, pem_of(key), chain)
    cert = tmp_path / "live" / "mail" / "cert.pem"
    cert.unlink()
    cert.symlink_to("../../archive/mail/cert1.pem")  # as certbot leaves it mid-swap
    with pytest.raises(ValidationError, match=r"links point to different versions \[1, 2\]"):
        read_lineage(str(tmp_path), "mail")


def test_a_forged_issuer_is_refused_with_a_reason_not_an_empty_one() -> None:
    key, (leaf, _inter) = make_chain(["mail.example.org"])
    _other, (_leaf, forged_inter) = make_chain(["mail.example.org"])
    with pytest.raises(ValidationError) as err:
        validate(material(key, [leaf, forged_inter]))
    line = str(err.value)
    assert "is not issued by certificate 2" in line and not line.endswith(": ")
    assert "its signature does not verify with the key of certificate 2" in line


@pytest.mark.parametrize("ca, names, message", [
    (True, ["mail.example.org"], "a CA certificate (basicConstraints CA:TRUE)"),
    (False, [], "no subjectAltName"),
])
def test_a_leaf_that_is_no_servers_certificate_is_refused(ca: bool, names: list[str],
                                                          message: str) -> None:
    from tests.support.pki import issue
    root_key, leaf_key = new_key(), new_key()
    root = issue("test root", "test root", root_key.public_key(), root_key, ca=True)
    leaf = issue("mail.example.org", "test root", leaf_key.public_key(), root_key, ca=ca,
                 names=names)
    with pytest.raises(ValidationError, match=f"cert1.pem: {re.escape(message)}"):
        validate(material(leaf_key, [leaf, root]))

"""The DANE gate's configuration, TSIG key files and state: what a packager's build checks.

Unit tier: as the user running the tests, in their own temp dir, no network (the gate's
DNS answers, RFC 2136 updates and the rollover run against Knot and Unbound in
tests/test_dane.py, the root tier).
"""
from __future__ import annotations

import grp
import os
import pwd
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from certbot_atomic_deploy import cli
from certbot_atomic_deploy.config import load
from certbot_atomic_deploy.dane import Server, parse_server, read_tsig
from certbot_atomic_deploy.state import DaneState, StateDir, TargetState
from daemon_keys.errors import ConfigError
from tests.support.site import make_site, run_main

ME = pwd.getpwuid(os.geteuid()).pw_name
MY_GROUP = grp.getgrgid(os.getegid()).gr_name
MX = "_25._tcp.mx.example.org"
SECRET = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI="


@pytest.fixture
def own_site(tmp_path: Path) -> Path:
    return make_site(tmp_path)


def write(site: Path, extra: str, defaults: str = "") -> Path:
    path = site / "le" / "atomic-deploy.conf"
    path.write_text(f"[defaults]\nowner = {ME}\ngroup = {MY_GROUP}\n{defaults}\n"
                    f"[mx]\nlineage = mail\npath = {site}/out/mail.pem\nformat = postfix\n"
                    f"{extra}\n")
    return path


def key_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


BIND = f'key "atomic-deploy" {{\n\talgorithm hmac-sha256;\n\tsecret "{SECRET}";\n}};\n'
KNOT = f"key:\n  - id: atomic-deploy\n    algorithm: hmac-sha256\n    secret: {SECRET}\n"


@pytest.mark.parametrize("text, server", [
    ("127.0.0.1", Server("127.0.0.1", 53)),
    ("127.0.0.1:5353", Server("127.0.0.1", 5353)),
    ("::1", Server("::1", 53)),
    ("[2001:db8::1]:53", Server("2001:db8::1", 53)),
])
def test_a_dns_server_is_an_address_and_a_port(text: str, server: Server) -> None:
    assert parse_server(text) == server


@pytest.mark.parametrize("text, message", [
    ("ns.example.org", "not a name"),
    ("127.0.0.1:0", "port is not a number"),
    ("127.0.0.1:99999", "port is not a number"),
    ("[::1]x", "not ADDRESS[:PORT]"),
])
def test_a_dns_server_by_name_or_with_a_bad_port_is_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        parse_server(text)


def test_a_target_with_tlsa_gets_its_gate_and_others_none(own_site: Path) -> None:
    path = write(own_site, f"tlsa = {MX}, _465._tcp.mx.example.org.", "dns_server = 127.0.0.1:53")
    dane = load(str(path), str(own_site / "le")).targets[0].dane
    assert dane is not None
    assert dane.names == (MX, "_465._tcp.mx.example.org")
    assert (dane.server, dane.dnssec, dane.grace_days, dane.near_expiry, dane.update) == (
        Server("127.0.0.1", 53), False, 7, "switch", None)
    assert load(str(write(own_site, "")), str(own_site / "le")).targets[0].dane is None


@pytest.mark.parametrize("extra, defaults, message", [
    ("tlsa_grace_days = 3", "", "only a target with tlsa ="),
    ("", "tlsa_near_expiry = hold", "only a target with tlsa ="),
    ("tlsa = mx.example.org", "", "is not a TLSA owner name"),
    (f"tlsa = {MX}\ntlsa_near_expiry = later", "", "is not one of switch, hold"),
    (f"tlsa = {MX}\ndnssec = yes", "", "is not one of require, off"),
    (f"tlsa = {MX}\ndns_server = ns.example.org", "", "not a name"),
    (f"tlsa = {MX}\ntlsa_zone = example.org", "", "tlsa_update: missing"),
    (f"tlsa = {MX}\ntlsa_update = {{key}}", "", "also give tlsa_update_server"),
    (f"tlsa = {MX}\ntlsa_update = {{key}}\ntlsa_update_server = 127.0.0.1\n"
     "tlsa_zone = example.net", "", "is not in zone example.net"),
    ("", f"tlsa = {MX}", "belongs in a target section"),
])
def test_a_dane_key_out_of_place_is_a_config_error_naming_it(
        own_site: Path, extra: str, defaults: str, message: str) -> None:
    key = key_file(own_site / "tsig.key", BIND)
    path = write(own_site, extra.format(key=key), defaults)
    with pytest.raises(ConfigError, match=message):
        load(str(path), str(own_site / "le"))


@pytest.mark.parametrize("text", [BIND, KNOT])
def test_a_tsig_key_is_read_in_binds_and_knots_format(own_site: Path, text: str) -> None:
    assert read_tsig(str(key_file(own_site / "tsig.key", text))) == (
        "atomic-deploy", "hmac-sha256", SECRET)


@pytest.mark.parametrize("mode, text, message", [
    (0o640, BIND, "mode 0640 lets the group read it"),
    (0o604, BIND, "mode 0604 lets others read it"),
    (0o600, "secret\n", "no TSIG key in it"),
    (0o600, BIND.replace("hmac-sha256", "hmac-md5"), "is not one of"),
])
def test_a_tsig_key_others_can_read_or_not_a_key_is_refused_by_check_config(
        own_site: Path, mode: int, text: str, message: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    key = key_file(own_site / "tsig.key", text, mode)
    path = write(own_site, f"tlsa = {MX}\ntlsa_update = {key}\ntlsa_update_server = 127.0.0.1\n"
                       "tlsa_zone = example.org")
    load(str(path), str(own_site / "le"))  # the config itself is fine: the key holds its target
    with pytest.raises(ConfigError, match=message):
        read_tsig(str(key))
    code, _, err = run_main(capsys, cli.main, "--config-dir", str(own_site / "le"), "--config",
                            str(path), "check-config")
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_a_held_switch_and_a_retirement_survive_the_state_file(tmp_path: Path) -> None:
    held = DaneState(held=3, since="2026-12-07T06:00:00+00:00", detail="no record",
                     publish=(f"{MX}. IN TLSA 3 1 1 ab",), switch_after=None,
                     retire=(f"{MX} 3 1 1 cd",), retire_after="2026-12-08T06:00:00+00:00",
                     retire_for=2)
    states = StateDir(str(tmp_path / "state"))
    states.put("mx", TargetState(dane=held))
    states.put("other", TargetState(dane=DaneState()))  # nothing held: not written
    states.flush()
    again = StateDir(str(tmp_path / "state"))
    assert again.load("mx").dane == held
    assert again.load("other").dane is None


def test_check_config_says_which_target_has_no_lineage_yet(
        own_site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A domains target no lineage covers, before a target that names its lineage: each
    is reported as itself (the config is fine; the lineage is not issued yet)."""
    path = own_site / "le" / "atomic-deploy.conf"
    path.write_text(f"[defaults]\nowner = {ME}\ngroup = {MY_GROUP}\n"
                    f"[later]\ndomains = imap.example.net\npath = {own_site}/out/imap.pem\n"
                    f"format = postfix\n"
                    f"[mx]\nlineage = mail\npath = {own_site}/out/mail.pem\nformat = postfix\n"
                    f"tlsa = {MX}\n")
    code, out, err = run_main(capsys, cli.main, "--config-dir", str(own_site / "le"),
                              "check-config")
    assert code == 0, err
    assert "[later] the lineage covering imap.example.net (now: none yet" in out
    assert f"    dane: TLSA {MX} asked of the system resolver must vouch" in out


@pytest.mark.parametrize("extra, argv, message", [
    ("", [], "no target in"),  # nothing to check: said, not a silent success
    (f"tlsa = {MX}", ["--name", MX], "--name is for printing records"),
    (f"tlsa = {MX}", ["--lineage", "mial"], "takes mial"),  # a typo: never green
])
def test_tlsa_check_without_a_gated_target_with_name_or_an_unknown_lineage_fails(
        own_site: Path, capsys: pytest.CaptureFixture[str], extra: str, argv: list[str],
        message: str) -> None:
    write(own_site, extra)
    code, out, err = run_main(capsys, cli.main, "--config-dir", str(own_site / "le"), "tlsa",
                              "--check", *argv)
    assert code == 2 and out == ""
    assert len(err) == 1 and message in err[0], err


def test_tlsa_check_of_a_target_that_serves_nothing_yet_asks_no_dns(
        own_site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing published: nothing to vouch for (and no resolver is asked: there is none
    on 127.0.0.1:9, the discard port)."""
    write(own_site, f"tlsa = {MX}\ndns_server = 127.0.0.1:9")
    code, out, err = run_main(capsys, cli.main, "--config-dir", str(own_site / "le"), "tlsa",
                              "--check")
    assert (code, err) == (0, [])
    assert out == "[mx] nothing published yet: nothing to check\n"


def test_without_dnspython_a_tlsa_target_is_held_with_a_line_saying_what_to_install(
        own_site: Path) -> None:
    """dnspython is optional (the dane extra): a machine without it holds the switch with
    one line naming the package, and deploys the other targets. The interpreter is
    told dnspython is absent the way Python spells it (None in sys.modules)."""
    write(own_site, f"tlsa = {MX}\ndns_server = 127.0.0.1:9\n"
                f"[plain]\nlineage = mail\npath = {own_site}/out/plain.pem\nformat = postfix")
    program = ("import sys; sys.modules['dns'] = None\n"
               "from certbot_atomic_deploy.cli import main\n"
               f"sys.exit(main(['--config-dir', {str(own_site / 'le')!r}, 'deploy', '--all']))")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("certbot-atomic-deploy: [mx] tlsa = needs dnspython 2.1 or "
                               "newer, which is not installed (apt install python3-dnspython")
    assert not (own_site / "out/mail.pem").exists()  # held: nothing served
    assert (own_site / "out/plain.pem").exists()  # the target without tlsa = is deployed


def test_only_the_names_own_tlsa_rrset_and_its_cname_chain_count() -> None:
    dns_message = pytest.importorskip("dns.message")
    dns_rrset = pytest.importorskip("dns.rrset")
    from certbot_atomic_deploy.dane import _answer

    def reply(*lines: str) -> Any:  # a dns.message.Message (dnspython may be absent)
        query = dns_message.make_query(MX, "TLSA")
        response = dns_message.make_response(query)
        for line in lines:
            owner, ttl, rdclass, rdtype, *data = line.split()
            response.answer.append(dns_rrset.from_text(owner, int(ttl), rdclass, rdtype,
                                                       " ".join(data)))
        return response

    digest = "aa" * 32
    # Another owner's RRset riding along in the answer vouches for nothing.
    stray = reply(f"_443._tcp.www.example.org. 60 IN TLSA 3 1 1 {digest}")
    assert _answer(stray, MX, False).records == ()
    # The name's own, and the one its CNAME leads to, count.
    own = reply(f"{MX}. 60 IN TLSA 3 1 1 {digest}")
    assert len(_answer(own, MX, False).records) == 1
    chained = reply(f"{MX}. 60 IN CNAME _dane.example.org.",
                    f"_dane.example.org. 60 IN TLSA 3 1 1 {digest}",
                    f"_other.example.org. 60 IN TLSA 3 1 1 {'bb' * 32}")
    assert [r.data.hex() for r in _answer(chained, MX, False).records] == [digest]

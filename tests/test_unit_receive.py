"""``certbot-atomic-deploy receive``: one request on stdin, one JSON answer on stdout.

Unit tier: the real command (``python -m certbot_atomic_deploy``) as the user running
the tests, in directories it owns, no network; the sender is this test, writing JSON.
What a push over ssh adds (forced command, host keys, many hosts) is tested with real
sshd in the root tier.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from certbot_atomic_deploy.receive import MAX_REQUEST_BYTES
from tests.support.pki import make_chain, pem_of

ME, MY_GROUP = os.geteuid(), os.getegid()


def _pems(days_valid: tuple[int, int] = (-1, 90), names: list[str] | None = None
          ) -> dict[str, str]:
    key, chain = make_chain(names or ["mail.example.org"], days_valid=days_valid)
    pems = [c.public_bytes(serialization.Encoding.PEM).decode() for c in chain]
    return {"privkey": pem_of(key).decode(), "cert": pems[0], "chain": "".join(pems[1:])}


def _stage(version: int, pems: dict[str, str], lineage: str = "mail") -> dict[str, object]:
    return {"protocol": 1, "action": "stage", "lineage": lineage, "version": version, **pems}


def _commit(version: int, lineage: str = "mail") -> dict[str, object]:
    return {"protocol": 1, "action": "commit", "lineage": lineage, "version": version}


class Receiver:
    def __init__(self, root: Path, extra: str = "") -> None:
        self.root = root
        self.conf = root / "conf" / "receive.conf"
        self.out = root / "out"
        self.log = root / "reloads.log"
        self.conf.parent.mkdir()
        self.out.mkdir()
        self.write(extra)

    def write(self, extra: str = "") -> None:
        self.conf.write_text(f"[defaults]\nowner = {ME}\ngroup = {MY_GROUP}\n\n"
                             f"[mail]\nlineage = mail\npath = {self.out}/mail.pem\n"
                             f"format = postfix\nreload = echo reloaded >> {self.log}\n{extra}")

    def send(self, request: dict[str, object] | bytes) -> tuple[int, dict[str, object], str]:
        data = request if isinstance(request, bytes) else json.dumps(request).encode()
        done = subprocess.run([sys.executable, "-m", "certbot_atomic_deploy", "--config",
                               str(self.conf), "receive"], input=data, capture_output=True,
                              timeout=60)
        lines = done.stdout.decode().splitlines()
        assert len(lines) == 1, done.stdout  # one JSON answer, whatever happened
        return done.returncode, json.loads(lines[0]), done.stderr.decode()

    @property
    def store(self) -> Path:
        return self.root / "conf" / "receive.store"


@pytest.fixture
def receiver(tmp_path: Path) -> Receiver:
    return Receiver(tmp_path)


def test_stage_writes_nothing_live_and_commit_publishes_and_reloads_once(
        receiver: Receiver) -> None:
    pems = _pems()
    code, answer, _ = receiver.send(_stage(3, pems))
    assert (code, answer["ok"], answer["action"]) == (0, True, "stage")
    assert not (receiver.out / "mail.pem").exists() and not receiver.log.exists()
    archive = receiver.store / "archive" / "mail"
    assert sorted(p.name for p in archive.iterdir()) == [
        "cert3.pem", "chain3.pem", "fullchain3.pem", "privkey3.pem"]
    assert stat.S_IMODE(receiver.store.stat().st_mode) == 0o700
    assert not (receiver.store / "live" / "mail").exists()  # staged, not live

    code, answer, err = receiver.send(_commit(3))
    assert (code, answer["ok"]) == (0, True), err
    published = (receiver.out / "mail.pem").read_bytes()
    assert published == (pems["privkey"] + pems["cert"] + pems["chain"]).encode()
    assert receiver.log.read_text() == "reloaded\n"
    targets = answer["targets"]
    assert isinstance(targets, list) and targets[0]["status"] == "published"


@pytest.mark.parametrize("request_bytes,why", [
    (b'{"protocol": 1, "action": "stage", "lineage": "mail", "vers', "not one JSON request"),
    (b"\x00\x01 not json", "not one JSON request"),
    (b'{"protocol": 2, "action": "commit", "lineage": "mail", "version": 1}',
     "not a protocol 1 request"),
    (b'{"protocol": 1, "action": "install", "lineage": "mail", "version": 1}',
     "action 'install' is not one of stage, commit, abort"),
    (b'{"protocol": 1, "action": "commit", "lineage": "../etc", "version": 1}',
     "'../etc' is not a lineage name"),
    (b'{"protocol": 1, "action": "stage", "lineage": "mail", "version": 1}',
     "privkey missing or not PEM text"),
    (b" " * (MAX_REQUEST_BYTES + 1), f"larger than {MAX_REQUEST_BYTES} bytes"),
], ids=["truncated", "binary", "protocol 2", "unknown action", "path as lineage", "no key",
        "oversized"])
def test_a_malformed_truncated_or_oversized_request_is_refused_with_nothing_written(
        receiver: Receiver, request_bytes: bytes, why: str) -> None:
    code, answer, err = receiver.send(request_bytes)
    assert code == 2 and answer["ok"] is False and why in str(answer["error"])
    assert err.count("\n") == 1 and why in err
    assert not receiver.store.exists() and not any(receiver.out.iterdir())


@pytest.mark.parametrize("pems,lineage,why", [
    ({**_pems(), "privkey": pem_of(make_chain(["x.example.org"])[0]).decode()}, "mail",
     "the key does not match the certificate"),
    (_pems(days_valid=(-30, -1)), "mail", "expired"),
    (_pems(names=["other.example.org"]), "mail", "does not cover 'mail.example.org'"),
    (_pems(), "web", "no target in"),
])
def test_a_bundle_this_host_would_not_publish_is_refused_at_stage(
        receiver: Receiver, pems: dict[str, str], lineage: str, why: str) -> None:
    receiver.write("domains = mail.example.org\n")
    code, answer, _ = receiver.send(_stage(1, pems, lineage))
    assert code != 0 and answer["ok"] is False, answer
    assert why in str(answer["error"]), answer
    assert not (receiver.store / "archive").exists() or not any(
        (receiver.store / "archive").rglob("*.pem"))
    assert not any(receiver.out.iterdir())


def test_the_receivers_issuers_pin_refuses_a_chain_from_another_ca(receiver: Receiver) -> None:
    ours = _pems()
    pin = receiver.root / "conf" / "issuers.pem"
    pin.write_text(ours["chain"])  # the intermediate our bundles end at
    receiver.write()
    text = receiver.conf.read_text().replace("[mail]", f"issuers = {pin}\n\n[mail]", 1)
    receiver.conf.write_text(text)
    assert receiver.send(_stage(1, ours))[0] == 0
    code, answer, _ = receiver.send(_stage(2, _pems()))
    assert code == 1 and "pinned issuers" in str(answer["error"])


def test_commit_needs_a_whole_staged_version_and_abort_removes_one(receiver: Receiver) -> None:
    code, answer, _ = receiver.send(_commit(7))
    assert code == 2 and "never staged here" in str(answer["error"])
    assert receiver.send(_stage(7, _pems()))[0] == 0
    (receiver.store / "archive" / "mail" / "chain7.pem").unlink()
    code, answer, _ = receiver.send(_commit(7))
    assert code == 2 and "chain missing" in str(answer["error"])
    code, answer, _ = receiver.send({"protocol": 1, "action": "abort", "lineage": "mail",
                                     "version": 7})
    assert (code, answer["removed"]) == (0, True)
    assert not any((receiver.store / "archive" / "mail").iterdir())
    assert not any(receiver.out.iterdir()) and not receiver.log.exists()


def test_a_commit_whose_check_fails_is_rolled_back_and_answered_not_ok(
        receiver: Receiver) -> None:
    first = _pems()
    assert receiver.send(_stage(1, first))[0] == 0
    assert receiver.send(_commit(1))[0] == 0
    before = (receiver.out / "mail.pem").read_bytes()
    receiver.write("check = false\n")
    assert receiver.send(_stage(2, _pems()))[0] == 0
    code, answer, err = receiver.send(_commit(2))
    assert code == 1 and answer["ok"] is False
    assert "mail v2: [mail] check 'false' failed" in err
    assert (receiver.out / "mail.pem").read_bytes() == before
    assert receiver.log.read_text() == "reloaded\n"  # the first commit's only


def test_the_store_keeps_the_live_version_the_one_before_and_one_staged(
        receiver: Receiver) -> None:
    """A sender cannot fill this host's disk: staging drops what was staged and never
    committed, and a commit keeps only the version it replaced."""
    for version in (1, 2, 3):
        assert receiver.send(_stage(version, _pems()))[0] == 0
        assert receiver.send(_commit(version))[0] == 0
    for version in (4, 5, 6):  # staged, never committed
        assert receiver.send(_stage(version, _pems()))[0] == 0
    archive = receiver.store / "archive" / "mail"
    versions = sorted({int("".join(c for c in p.name if c.isdigit())) for p in archive.iterdir()})
    assert versions == [2, 3, 6]
    assert len(list(archive.iterdir())) == 12


def test_status_of_a_receiver_reads_its_store(receiver: Receiver) -> None:
    assert receiver.send(_stage(1, _pems()))[0] == 0
    assert receiver.send(_commit(1))[0] == 0
    status = subprocess.run([sys.executable, "-m", "certbot_atomic_deploy", "--config",
                             str(receiver.conf), "status", "--json"], capture_output=True,
                            text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    rows = json.loads(status.stdout)
    assert [(r["target"], r["version"], r["in_sync"]) for r in rows] == [("mail", 1, True)]


def test_staging_the_live_version_again_is_ok_and_other_bytes_under_it_are_refused(
        receiver: Receiver) -> None:
    """A sender whose run died after its commit asks again: the same bytes are answered
    as live (nothing written); other bytes under the live version's number are refused
    with what to do."""
    first = _pems()
    assert receiver.send(_stage(1, first))[0] == 0
    assert receiver.send(_commit(1))[0] == 0
    archive = receiver.store / "archive" / "mail"
    before = {p.name: p.stat().st_mtime_ns for p in archive.iterdir()}
    code, answer, _ = receiver.send(_stage(1, first))
    assert (code, answer["ok"], answer["live"]) == (0, True, True)
    assert {p.name: p.stat().st_mtime_ns for p in archive.iterdir()} == before
    code, answer, _ = receiver.send(_stage(1, _pems()))
    assert code == 2 and "mail v1 is live here with other bytes" in str(answer["error"])
    assert {p.name: p.stat().st_mtime_ns for p in archive.iterdir()} == before


def _session(receiver: Receiver, *requests: dict[str, object]
             ) -> tuple[int, list[dict[str, object]], str]:
    """One session: the requests as lines on one stdin; every answer line."""
    data = b"".join(json.dumps(r).encode() + b"\n" for r in requests)
    done = subprocess.run([sys.executable, "-m", "certbot_atomic_deploy", "--config",
                           str(receiver.conf), "receive"], input=data, capture_output=True,
                          timeout=60)
    return (done.returncode, [json.loads(line) for line in done.stdout.splitlines()],
            done.stderr.decode())


def test_a_session_stages_and_then_commits_that_version_only(receiver: Receiver) -> None:
    """What a sender does over one connection: stage, then that version's commit. Any
    other second request is refused after the stage's answer, nothing committed."""
    code, answers, err = _session(receiver, _stage(1, _pems()), _commit(1))
    assert code == 0, err
    assert [(a["action"], a["ok"]) for a in answers] == [("stage", True), ("commit", True)]
    assert receiver.log.read_text() == "reloaded\n"
    before = (receiver.out / "mail.pem").read_bytes()
    for second in (_commit(3), _stage(3, _pems()), _commit(2, lineage="web")):
        code, answers, _ = _session(receiver, _stage(2, _pems()), second)
        assert code == 2 and [a["ok"] for a in answers] == [True, False]
        assert "a session takes only its commit or abort" in str(answers[1]["error"])
        assert (receiver.out / "mail.pem").read_bytes() == before
    code, answers, _ = _session(receiver, _stage(4, _pems()))  # the end after a stage: fine
    assert (code, [a["action"] for a in answers]) == (0, ["stage"])


# -- what a receiver refuses to stage (issue 23)

def _leaf_pems(ca: bool, names: list[str]) -> dict[str, str]:
    from tests.support.pki import issue, new_key
    root_key, leaf_key = new_key(), new_key()
    root = issue("test root", "test root", root_key.public_key(), root_key, ca=True)
    leaf = issue("mail.example.org", "test root", leaf_key.public_key(), root_key, ca=ca,
                 names=names)
    return {"privkey": pem_of(leaf_key).decode(),
            "cert": leaf.public_bytes(serialization.Encoding.PEM).decode(),
            "chain": root.public_bytes(serialization.Encoding.PEM).decode()}


@pytest.mark.parametrize("ca, names, message", [
    (True, ["mail.example.org"], "a CA certificate (basicConstraints CA:TRUE)"),
    (False, [], "no subjectAltName"),
])
def test_a_leaf_that_is_no_servers_certificate_is_not_staged(
        receiver: Receiver, ca: bool, names: list[str], message: str) -> None:
    code, answer, _err = receiver.send(_stage(1, _leaf_pems(ca, names)))
    assert code != 0 and answer["ok"] is False and message in str(answer["error"])
    assert not receiver.store.exists() or not list(receiver.store.rglob("*.pem"))


def test_an_older_certificate_than_the_live_one_is_refused_unless_told_rollback(
        receiver: Receiver) -> None:
    older = _pems(days_valid=(-5, 90))
    newer = _pems(days_valid=(-1, 90))
    assert receiver.send(_stage(1, newer))[0] == 0
    assert receiver.send(_commit(1))[0] == 0
    live = (receiver.out / "mail.pem").read_bytes()
    code, answer, err = receiver.send(_stage(2, older))
    assert code == 2 and answer["ok"] is False
    assert "is older than the live one" in str(answer["error"]) and "a downgrade" in err
    assert not (receiver.store / "archive" / "mail" / "cert2.pem").exists()
    code, answer, _ = receiver.send({**_stage(2, older), "rollback": True})
    assert (code, answer["ok"]) == (0, True)
    assert (receiver.out / "mail.pem").read_bytes() == live  # staged, not yet committed


@pytest.mark.parametrize("request_bytes", [
    b"[" * 100_000 + b"\n",  # nested past the parser's recursion limit
    b'{"protocol": 1, "action": "stage", "lineage": "mail\\n", "version": 1}\n',
])
def test_a_request_nobody_should_send_is_one_json_refusal(receiver: Receiver,
                                                          request_bytes: bytes) -> None:
    code, answer, err = receiver.send(request_bytes)
    assert code == 2 and answer["ok"] is False, err
    assert "Traceback" not in err and "unexpected" not in err


def test_a_refused_receiver_config_still_answers_one_json_line(receiver: Receiver) -> None:
    receiver.conf.write_text("[mail]\nlineage = mail\npath = relative.pem\nformat = key\n")
    code, answer, _err = receiver.send(_stage(1, _pems()))
    assert code == 2 and answer["ok"] is False and "not an absolute path" in str(answer["error"])

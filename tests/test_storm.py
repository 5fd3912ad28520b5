"""The short handshake storm (bench/storm.py): a real Postfix on our combined file never fails.

STARTTLS clients connect in tight bounded loops to a private Postfix whose every
connection is a fresh smtpd reading the chain file, while renewals run back to
back and each is published by our deploy code. The same storm against
certbot's live/ files is run as the control and reported.
"""
from __future__ import annotations

import shutil

import pytest

from bench import mixed_read, storm
from tests.support.figures import report
from tests.support.pki import Pair

pytestmark = [pytest.mark.root, pytest.mark.certbot,  # certbot's storage renews meanwhile
              pytest.mark.skipif(not shutil.which("postfix", path="/usr/sbin"),
                                 reason="postfix is installed by scripts/test")]
CONNECTIONS = 1000


@pytest.fixture(scope="module")
def pairs() -> list[Pair]:
    return mixed_read.make_pairs()


def test_postfix_on_our_combined_file_fails_no_handshake(pairs: list[Pair]) -> None:
    r = storm.storm(True, CONNECTIONS, 4, pairs)
    report(f"storm, our combined file: {r['handshakes']:.0f} STARTTLS handshakes during "
           f"{r['renewals']:.0f} renewals, {r['failed']:.0f} failed, "
           f"{r['unknown_cert']:.0f} unpublished certs")
    assert r["handshakes"] == CONNECTIONS and r["renewals"] >= 50
    assert (r["failed"], r["unknown_cert"]) == (0, 0)


def test_postfix_on_certbot_live_files_is_caught_failing(pairs: list[Pair]) -> None:
    """The control: the storm does see certbot's one-by-one link swap break handshakes."""
    r = storm.storm(False, CONNECTIONS, 4, pairs)
    report(f"storm, certbot live/ files (control): {r['handshakes']:.0f} handshakes during "
           f"{r['renewals']:.0f} renewals, {r['failed']:.0f} failed "
           f"({10_000 * r['failed'] / r['handshakes']:.0f} per 10,000)")
    assert r["handshakes"] == CONNECTIONS and r["renewals"] >= 50
    assert r["failed"] > 0

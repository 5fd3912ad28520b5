"""The short mixed-read torture (bench/mixed_read.py): our readers never see a bad pair.

Readers in separate processes load key and certificate in tight loops while a
writer publishes new versions as fast as it can. Our combined file and our
directory-relative readers must see zero bad reads over at least 100,000
reads each; Certbot's own layout, read by path, is the control that shows the
check does catch bad pairs.
"""
from __future__ import annotations

import pytest

from bench import mixed_read
from tests.support.figures import report
from tests.support.pki import Pair

pytestmark = pytest.mark.root  # the writer publishes with root's owners

MIN_READS = 50_000  # per reader; two readers per row


@pytest.fixture(scope="module")
def pairs() -> list[Pair]:
    return mixed_read.make_pairs()


@pytest.mark.parametrize("kind,style", [("file", "combined"), ("dir", "dir-relative")])
def test_our_readers_see_no_bad_pair(pairs: list[Pair], kind: str,
                                     style: str) -> None:
    row = mixed_read.scenario(kind, style, readers=2, reads=2_000_000, rate=0, pairs=pairs,
                              publishes=300, seconds=30, min_reads=MIN_READS)
    report(f"mixed read {kind}/{style}: {row.reads:,} reads, {row.publishes} publishes, "
           f"{row.bad} bad")
    assert row.reads >= 2 * MIN_READS and row.publishes >= 100
    assert (row.mismatch, row.missing, row.partial) == (0, 0, 0)


@pytest.mark.certbot  # certbot's own storage writes the lineage
def test_certbot_layout_read_by_path_is_caught_mixing(pairs: list[Pair]) -> None:
    row = mixed_read.scenario("certbot", "key-then-cert", readers=2, reads=2_000_000, rate=0,
                              pairs=pairs, publishes=150, seconds=30, min_reads=MIN_READS)
    report(f"mixed read certbot/key-then-cert (control): {row.reads:,} reads, "
           f"{row.publishes} publishes, {row.bad} bad ({row.per10k(row.bad):.0f} per 10,000)")
    assert row.bad > 0

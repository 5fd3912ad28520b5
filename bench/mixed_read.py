"""Mixed-read torture: readers load key and certificate while a writer publishes new versions.

Writers (each publishes new versions as fast as it can, or at a fixed rate):
- ``certbot``: Certbot's own storage code, the calls a renewal makes
  (``RenewableCert.save_successor`` then ``update_all_links_to``), the reference;
- ``file``: our ``publish_file`` replacing one combined (key + full chain) file;
- ``dir``: our ``publish_directory`` filling ``vN/`` and switching ``current``.

Reader styles (each a separate process in a tight loop, bounded by a read count):
- ``key-then-cert`` / ``cert-then-key``: two opens by path (``live/<name>/privkey.pem``
  and ``fullchain.pem``, or ``DIR/current/...``), what most daemons do;
- ``dir-relative``: open ``DIR/current`` once, read both files relative to it;
- ``combined``: read the one combined file.

A read is *good* when key and certificate belong to the same published version
(identified by content: no cryptography per read), *mismatch* when they
belong to two versions, *missing* when a file was absent, *partial* when the
bytes were no complete version at all.

    python -m bench.mixed_read                                 # the full table (~3 minutes)
    python -m bench.mixed_read --publishes 200 --seconds 2     # a quick look
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from certbot_atomic_deploy.pem import DIRECTORY_FILES
from certbot_atomic_deploy.publish import NewFile, publish_directory, publish_file
from daemon_keys.fs import Leftovers
from tests.support.pki import Pair, make_pair

VERSIONS = 4  # distinct key/cert pairs the writers cycle through
KEY_END = b"-----END PRIVATE KEY-----\n"


if TYPE_CHECKING:
    from multiprocessing.sharedctypes import Synchronized
    from multiprocessing.synchronize import Event


def make_pairs(n: int = VERSIONS) -> list[Pair]:
    """``n`` distinct versions to cycle through, each its own key and chain."""
    return [make_pair([f"v{i}.example.org"]) for i in range(n)]


# -- writers ---------------------------------------------------------------

# A reader that opened DIR/current (vN) can read it until `keep` newer versions exist,
# then vN is pruned under it. At hundreds of publishes a second, a reader descheduled on
# a loaded machine outlived keep = 2 once in about a million reads ("missing"); no
# renewal rate comes near that, so the bench keeps more than the default.
KEEP = 5


def _new(data: bytes, holds_key: bool) -> NewFile:
    return NewFile(data, 0, 0, 0o600 if holds_key else 0o644)


class Writer:
    def __init__(self, kind: str, root: Path, pairs: list[Pair]) -> None:
        self.kind, self.root, self.pairs = kind, root, pairs
        self.count = 0
        if kind == "certbot":
            self._certbot_setup()
        else:
            self.leftovers = Leftovers()
            self.publish(0)

    def _certbot_setup(self) -> None:
        from certbot import configuration
        from certbot._internal import cli, storage
        from certbot._internal.plugins import disco
        config_dir = self.root / "le"
        args = ["certonly", "--config-dir", str(config_dir), "--work-dir",
                str(self.root / "work"), "--logs-dir", str(self.root / "logs")]
        parsed = cli.prepare_and_parse_args(disco.PluginsRegistry.find_all(), args)
        # certbot 2.x returns the argparse namespace, later releases the config itself
        self.config = (parsed if isinstance(parsed, configuration.NamespaceConfig)
                       else configuration.NamespaceConfig(parsed))
        p = self.pairs[0]
        self.lineage = storage.RenewableCert.new_lineage("bench", p.cert, p.key, p.chain,
                                                         self.config)
        self.version = self.lineage.latest_common_version()

    def paths(self) -> dict[str, str]:
        if self.kind == "certbot":
            live = self.root / "le" / "live" / "bench"
            return {"key": str(live / "privkey.pem"), "cert": str(live / "fullchain.pem")}
        if self.kind == "file":
            return {"combined": str(self.root / "combined.pem")}
        current = self.root / "dir" / "current"
        return {"key": str(current / "privkey.pem"), "cert": str(current / "fullchain.pem"),
                "dir": str(current)}

    def publish(self, i: int) -> None:
        p = self.pairs[i % len(self.pairs)]
        if self.kind == "certbot":
            self.version = self.lineage.save_successor(self.version, p.cert, p.key, p.chain,
                                                       self.config)
            self.lineage.update_all_links_to(self.version)
        elif self.kind == "file":
            publish_file(str(self.root / "combined.pem"), _new(p.key + p.fullchain, True),
                         self.leftovers)
        else:
            files = {"privkey.pem": _new(p.key, True), "cert.pem": _new(p.cert, False),
                     "chain.pem": _new(p.chain, False),
                     "fullchain.pem": _new(p.fullchain, False),
                     "combined.pem": _new(p.key + p.fullchain, True)}
            assert set(files) == set(DIRECTORY_FILES)
            publish_directory(str(self.root / "dir"), files, owner_uid=0, keep=KEEP,
                              leftovers=self.leftovers)
        self.count += 1


def write_loop(kind: str, root: str, pairs: list[Pair], rate: float, stop: Event,
               started: Event, published: Synchronized[int]) -> None:
    writer = Writer(kind, Path(root), pairs)
    started.set()
    i = 1
    interval = 1.0 / rate if rate > 0 else 0.0
    next_at = time.monotonic()
    while not stop.is_set():
        writer.publish(i)
        published.value = writer.count
        i += 1
        if interval:
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)


# -- readers ---------------------------------------------------------------


def _read(path: str, dir_fd: int | None = None) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        chunks: list[bytes] = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)


def read_loop(style: str, paths: dict[str, str], pairs: list[Pair], reads: int,
              min_reads: int, stop: Event, out: mp.Queue[dict[str, int]]) -> None:
    key_id = {p.key: i for i, p in enumerate(pairs)}
    cert_id = {p.fullchain: i for i, p in enumerate(pairs)}
    counts = {"reads": 0, "mismatch": 0, "missing": 0, "partial": 0}
    for _ in range(reads):
        if stop.is_set() and counts["reads"] >= min_reads:
            break
        counts["reads"] += 1
        try:
            if style == "combined":
                data = _read(paths["combined"])
                cut = data.find(KEY_END)
                key, cert = (data[:cut + len(KEY_END)], data[cut + len(KEY_END):]) if cut >= 0 \
                    else (b"", b"")
            elif style == "dir-relative":
                dfd = os.open(paths["dir"], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    key = _read("privkey.pem", dfd)
                    cert = _read("fullchain.pem", dfd)
                finally:
                    os.close(dfd)
            elif style == "key-then-cert":
                key = _read(paths["key"])
                cert = _read(paths["cert"])
            else:
                cert = _read(paths["cert"])
                key = _read(paths["key"])
        except FileNotFoundError:
            counts["missing"] += 1
            continue
        k, c = key_id.get(key), cert_id.get(cert)
        if k is None or c is None:
            counts["partial"] += 1
        elif k != c:
            counts["mismatch"] += 1
    out.put(counts)


# -- a scenario and the table ----------------------------------------------

STYLES = {
    "certbot": ("key-then-cert", "cert-then-key"),
    "file": ("combined",),
    "dir": ("dir-relative", "key-then-cert"),
}


@dataclass
class Row:
    writer: str
    rate: str
    style: str
    reads: int
    mismatch: int
    missing: int
    partial: int
    publishes: int
    seconds: float

    @property
    def bad(self) -> int:
        return self.mismatch + self.missing + self.partial

    def per10k(self, n: int) -> float:
        return 10_000 * n / self.reads if self.reads else 0.0


def scenario(kind: str, style: str, readers: int, reads: int, rate: float,
             pairs: list[Pair], publishes: int, seconds: float, min_reads: int = 0) -> Row:
    """One row: readers read (at most ``reads`` each) until the writer has published
    ``publishes`` times (as fast as it can) or for ``seconds`` (at a fixed rate)."""
    root = Path(tempfile.mkdtemp(prefix=f"mixed-read-{kind}-"))
    ctx = mp.get_context("fork")
    try:
        stop, started, done = ctx.Event(), ctx.Event(), ctx.Event()
        published = ctx.Value("i", 0)
        writer = ctx.Process(target=write_loop,
                             args=(kind, str(root), pairs, rate, stop, started, published))
        writer.start()
        if not started.wait(120):
            raise RuntimeError(f"{kind} writer did not start")
        paths = Writer.__new__(Writer)
        paths.kind, paths.root = kind, root
        queue: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
        procs = [ctx.Process(target=read_loop,
                             args=(style, paths.paths(), pairs, reads, min_reads, done,
                                   queue))
                 for _ in range(readers)]
        t0 = time.monotonic()
        for p in procs:
            p.start()
        deadline = t0 + (seconds if rate > 0 else 10 * seconds)
        while time.monotonic() < deadline and any(p.is_alive() for p in procs):
            if rate <= 0 and published.value >= publishes:
                break
            time.sleep(0.01)
        done.set()
        results = [queue.get(timeout=600) for _ in procs]
        seconds = time.monotonic() - t0
        for p in procs:
            p.join()
        stop.set()
        writer.join(60)
        total = {k: sum(r[k] for r in results) for k in results[0]}
        return Row(kind, "max" if rate <= 0 else f"{rate:g}/s", style, total["reads"],
                   total["mismatch"], total["missing"], total["partial"], published.value,
                   seconds)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def table(rows: list[Row]) -> str:
    head = ("| writer | rate | reader | reads | publishes | mismatched | missing | partial "
            "| bad per 10,000 |\n|---|---|---|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r.writer} | {r.rate} | {r.style} | {r.reads:,} | {r.publishes:,} "
                     f"| {r.mismatch:,} | {r.missing:,} | {r.partial:,} "
                     f"| {r.per10k(r.bad):.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readers", type=int, default=2, help="reader processes per row")
    parser.add_argument("--reads", type=int, default=2_000_000,
                        help="at most this many reads per reader and row")
    parser.add_argument("--publishes", type=int, default=2_000,
                        help="a max-rate row ends after this many publishes")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="a fixed-rate row lasts this long (a max-rate row at most 10x)")
    parser.add_argument("--rate", type=float, default=50.0,
                        help="publishes per second for the fixed-rate rows")
    parser.add_argument("--writers", default="certbot,file,dir")
    args = parser.parse_args(argv)
    pairs = make_pairs()
    rows = []
    for kind in args.writers.split(","):
        for rate in (0.0, args.rate):
            for style in STYLES[kind]:
                rows.append(scenario(kind, style, args.readers, args.reads, rate, pairs,
                                     args.publishes, args.seconds))
                print(f"  {rows[-1]}", file=sys.stderr, flush=True)
    print(table(rows))
    total_reads = sum(r.reads for r in rows)
    total_pub = sum(r.publishes for r in rows)
    print(f"\n{total_reads:,} reads, {total_pub:,} publishes, "
          f"{args.readers} readers per row, fixed rate {args.rate:g}/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

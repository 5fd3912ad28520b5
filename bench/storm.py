"""Handshake storm: STARTTLS clients hammer a real Postfix while renewals run back to back.

Two rows, one Postfix each (``smtpd -o max_use=1``: every connection is a fresh
smtpd that loads key and chain itself):

- ``certbot live/ files``: ``smtpd_tls_chain_files = live/<name>/privkey.pem,
  live/<name>/fullchain.pem``, what users have today, while Certbot's own
  storage code renews (``save_successor`` + ``update_all_links_to``);
- ``our combined file``: ``smtpd_tls_chain_files`` on the file
  certbot-atomic-deploy publishes, while the same renewals run and each one is
  followed by our publish of that file.

A handshake fails when the server answers STARTTLS with 454 (Postfix found a
mismatched pair and disabled TLS) or the TLS handshake breaks (a missing file).
A completed handshake proves the server held the key of the certificate it
served, and the served certificate must be one of the published versions.

    python -m bench.storm                       # 10,000 connections per row
    python -m bench.storm --connections 1000
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import smtplib
import ssl
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bench.mixed_read import Writer, make_pairs
from certbot_atomic_deploy.publish import NewFile, publish_file
from tests.support.daemons import postfix
from tests.support.pki import Pair

if TYPE_CHECKING:
    from multiprocessing.sharedctypes import Synchronized
    from multiprocessing.synchronize import Event


def renew_loop(root: str, pairs: list[Pair], ours: bool, stop: Event,
               started: Event, count: Synchronized[int]) -> None:
    certbot = Writer("certbot", Path(root), pairs)
    combined = Writer("file", Path(root), pairs) if ours else None
    started.set()
    i = 1
    while not stop.is_set():
        certbot.publish(i)  # a renewal, the way certbot stores it
        if combined is not None:
            p = pairs[i % len(pairs)]
            # our deploy hook's publish
            publish_file(str(Path(root) / "combined.pem"),
                         NewFile(p.key + p.fullchain, 0, 0, 0o600), combined.leftovers)
        count.value += 1
        i += 1


def client_loop(port: int, connections: int, known: set[bytes],
                out: mp.Queue[dict[str, int]]) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    counts = {"handshakes": 0, "failed": 0, "unknown_cert": 0}
    for _ in range(connections):
        counts["handshakes"] += 1
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
                smtp.starttls(context=context)  # a 454, or no STARTTLS offered, raises
                der = smtp.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
                if der not in known:
                    counts["unknown_cert"] += 1
        except (smtplib.SMTPException, ssl.SSLError, OSError):
            counts["failed"] += 1
    out.put(counts)


def storm(ours: bool, connections: int, clients: int, pairs: list[Pair]) -> dict[str, float]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    root = Path(tempfile.mkdtemp(prefix="storm-"))
    root.chmod(0o755)
    ctx = mp.get_context("fork")
    known = {x509.load_pem_x509_certificate(p.cert).public_bytes(serialization.Encoding.DER)
             for p in pairs}
    try:
        stop, started = ctx.Event(), ctx.Event()
        renewals = ctx.Value("i", 0)
        writer = ctx.Process(target=renew_loop,
                             args=(str(root), pairs, ours, stop, started, renewals))
        writer.start()
        if not started.wait(120):
            raise RuntimeError("the renewal loop did not start")
        live = root / "le" / "live" / "bench"
        files = str(root / "combined.pem") if ours else \
            f"{live}/privkey.pem, {live}/fullchain.pem"
        with postfix(root / "postfix", files) as daemon:
            queue: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
            procs = [ctx.Process(target=client_loop,
                                 args=(daemon.port, connections // clients, known, queue))
                     for _ in range(clients)]
            t0 = time.monotonic()
            for p in procs:
                p.start()
            results = [queue.get(timeout=3600) for _ in procs]
            seconds = time.monotonic() - t0
            for p in procs:
                p.join()
        stop.set()
        writer.join(60)
        total = {k: sum(r[k] for r in results) for k in results[0]}
        return {**total, "renewals": renewals.value, "seconds": seconds}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10_000, help="per row")
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args(argv)
    pairs = make_pairs()
    print("| Postfix reads | handshakes | renewals | failed | served an unpublished cert "
          "| failed per 10,000 |\n|---|---:|---:|---:|---:|---:|")
    for ours, label in ((False, "certbot live/ files (privkey.pem, fullchain.pem)"),
                        (True, "our combined file (certbot-atomic-deploy)")):
        r = storm(ours, args.connections, args.clients, pairs)
        bad = r["failed"] + r["unknown_cert"]
        print(f"| {label} | {r['handshakes']:,.0f} | {r['renewals']:,.0f} | {r['failed']:,.0f} "
              f"| {r['unknown_cert']:,.0f} | {10_000 * bad / r['handshakes']:.1f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""An exposure watcher: a process outside the key's spec that tries to read key bytes.

Run it as the outsider (``setpriv --reuid=65534 --regid=65534 --clear-groups``):
it walks the given directories in a tight loop, opens every regular file it can
(following symlinks, as a daemon would), and records every read that returns
private key bytes. Each such read is an exposure: someone outside the spec read
the key. It stops when the stop file appears (or after --seconds) and prints
one JSON object: scans, opens attempted, opens that succeeded, exposures.

Used by the test suite and the benchmarks; standard library only.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

MARKER = b"PRIVATE KEY"


def scan(roots: list[str], stats: dict[str, int], exposures: list[str]) -> None:
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(
                    dirpath, d))]:
                path = os.path.join(dirpath, name)
                stats["attempts"] += 1
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                except OSError:
                    continue
                try:
                    data = os.read(fd, 1 << 16)
                except OSError:
                    data = b""
                finally:
                    os.close(fd)
                stats["opened"] += 1
                if MARKER in data:
                    exposures.append(path)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("roots", nargs="+")
    parser.add_argument("--stop", required=True, help="stop when this file exists")
    parser.add_argument("--seconds", type=float, default=600.0)
    args = parser.parse_args()
    stats = {"scans": 0, "attempts": 0, "opened": 0}
    exposures: list[str] = []
    deadline = time.monotonic() + args.seconds
    while not os.path.exists(args.stop) and time.monotonic() < deadline:
        scan(args.roots, stats, exposures)
        stats["scans"] += 1
    scan(args.roots, stats, exposures)  # one more after the last change
    stats["scans"] += 1
    json.dump({**stats, "exposures": len(exposures), "examples": sorted(set(exposures))[:10]},
              sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``certbot-atomic-deploy`` command line (filled in by the atomic deploy work)."""
from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    print("usage: certbot-atomic-deploy {deploy,status,rollback,check-config} ...",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

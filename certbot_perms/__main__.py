"""``python -m certbot_perms``: the same as the ``certbot-perms`` command."""
import sys

from certbot_perms.cli import main

sys.exit(main())

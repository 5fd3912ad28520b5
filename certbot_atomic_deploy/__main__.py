"""``python -m certbot_atomic_deploy``: the same as the ``certbot-atomic-deploy`` command."""
import sys

from certbot_atomic_deploy.cli import main

sys.exit(main())

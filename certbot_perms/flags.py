"""``open(2)`` flags for reading where a hostile local user may have planted something.

Imports nothing but ``os``; shared by both packages so there is one definition.
Never follow a symlink in the final component, never block on a FIFO planted
where a file should be, never acquire a controlling terminal, never leak the
descriptor into a child.
"""
from __future__ import annotations

import os

READ_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
READ_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

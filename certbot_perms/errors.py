"""One error tree for certbot_perms. Every message is one self-contained line:
what is wrong, where, and what to do. Imports no certbot."""


class PermsError(Exception):
    """Root of every error this package raises on purpose."""


class SpecError(PermsError):
    """A key owner, group or mode that cannot be used (unknown, malformed, too open)."""


class LineageError(PermsError):
    """A lineage that does not exist or whose layout cannot be trusted."""

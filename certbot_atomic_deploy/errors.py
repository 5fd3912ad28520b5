"""One error tree for certbot_atomic_deploy. Imports no certbot.

Every message is one self-contained line, "<where>: what is wrong (what to do)",
because Certbot shows a failing hook only as "reported error code N" plus the
hook's stderr.
"""


class DeployError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(DeployError):
    """The deploy configuration file is unreadable or invalid."""


class ValidationError(DeployError):
    """Key or certificate material that must not be published."""


class UnsafePathError(DeployError):
    """A destination that cannot be written safely (symlink, writable by others, ...)."""


class WriteError(DeployError):
    """A write, rename or sync failed; the destination is left as it was."""


class LockError(DeployError):
    """Another run holds the lock for too long."""


class CommandError(DeployError):
    """A check or reload command failed."""

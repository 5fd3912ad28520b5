"""daemon_keys: the certbot-free core under both commands.

Imports no certbot and no cryptography. ``certbot_perms`` (the installer and
``certbot-perms``) and ``certbot_atomic_deploy`` (the deploy hook) import from
here and never from each other:

- :mod:`.errors`: one error tree; each class carries its exit code; the one
  formatter for an ``OSError`` and for an exception nobody raised on purpose;
- :mod:`.fs`: the ``open(2)`` flags for hostile directories, one path walker
  with an explicit symlink policy, one bounded regular-file reader, temp names;
- :mod:`.atomicfile`: the atomic, durable write (its numbered contract);
- :mod:`.keyspec`: a key's owner, group and mode, their rules and defaults;
- :mod:`.command`: what both command lines share (global options in either
  place, ``--version``, errors to exit codes).
"""

__version__ = "0.2.0"

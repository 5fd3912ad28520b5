"""Where a lineage's key spec is written down. Imports no certbot.

Two places, read in this order:
1. ``renewal/<name>.conf``, when the lineage's installer is ``perms``: Certbot
   itself stores ``perms_key_owner``/``perms_key_group``/``perms_key_mode``
   under ``[renewalparams]`` and restores them on every ``certbot renew``;
2. ``certbot-perms/<name>.conf`` in the config dir, written by
   ``certbot-perms apply`` with explicit options, so that the deploy hook
   (run with no options) and ``certbot-perms check`` know the spec of
   lineages that use another installer. One small configobj file per lineage,
   replaced atomically.
A lineage in neither has no spec: its keys should be 0600 and root's.
"""
from __future__ import annotations

import os

from configobj import ConfigObj, ConfigObjError

from daemon_keys.atomicfile import open_for_writing, write_file_atomic
from daemon_keys.errors import ConfigError, SpecError
from daemon_keys.fs import read_regular
from daemon_keys.keyspec import KeySpec, parse_spec

RECORD_DIR = "certbot-perms"
RECORD_DIR_MODE = 0o755
RECORD_FILE_MODE = 0o644
OPTIONS = ("key-owner", "key-group", "key-mode")
_RENEWAL_MARKER = b"perms_key_"
MAX_RECORD_BYTES = 1 << 16


def _clean(value: object) -> str | None:
    if value is None or value in ("None", ""):
        return None
    return str(value)


def renewal_options(config_dir: str, name: str) -> dict[str, str | None] | None:
    """The perms options Certbot stored for this lineage, or None if it uses another installer."""
    path = os.path.join(config_dir, "renewal", f"{name}.conf")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    if _RENEWAL_MARKER not in data:  # fast path: most lineages, no configobj parse
        return None
    try:
        params = ConfigObj(data.decode("utf-8").splitlines(), interpolation=False).get(
            "renewalparams", {})
    except (ConfigObjError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot parse: {exc}") from None
    if params.get("installer") != "perms":
        return None
    return {opt: _clean(params.get("perms_" + opt.replace("-", "_"))) for opt in OPTIONS}


def recorded_options(config_dir: str, name: str) -> dict[str, str | None] | None:
    path = os.path.join(config_dir, RECORD_DIR, f"{name}.conf")
    if not os.path.lexists(path):
        return None
    hint = "fix it, or rewrite it with certbot-perms apply --key-group ..."
    _st, data = read_regular(path, limit=MAX_RECORD_BYTES, where=path, error=ConfigError,
                             hint=hint)
    try:
        conf = ConfigObj(data.decode("utf-8").splitlines(), interpolation=False)
    except (ConfigObjError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot parse: {exc} ({hint})") from None
    unknown = sorted(set(conf) - {o.replace("-", "_") for o in OPTIONS})
    if unknown:
        raise ConfigError(f"{path}: unknown key '{unknown[0]}' (allowed: "
                         "key_owner, key_group, key_mode)")
    return {opt: _clean(conf.get(opt.replace("-", "_"))) for opt in OPTIONS}


def spec_for(config_dir: str, name: str) -> tuple[KeySpec | None, str]:
    """The lineage's spec and where it came from ('' when it has none)."""
    for source, options, prefix in (
            (os.path.join(config_dir, "renewal", f"{name}.conf"),
             renewal_options(config_dir, name), "perms_key_"),
            (os.path.join(config_dir, RECORD_DIR, f"{name}.conf"),
             recorded_options(config_dir, name), "key_")):
        if options is not None:
            try:
                return parse_spec(options["key-owner"], options["key-group"],
                                  options["key-mode"], names=(
                                      f"{prefix}owner", f"{prefix}group", f"{prefix}mode"),
                                  all_defaults=True), source
            except SpecError as exc:
                raise ConfigError(f"{source}: {exc}") from None
    return None, ""


def record_spec(config_dir: str, name: str, spec: KeySpec) -> bool:
    """Write the spec for ``name`` if it differs from what is recorded; True if written."""
    if recorded_options(config_dir, name) == spec.as_options():
        return False
    body = ("# Written by certbot-perms apply: the key spec its deploy hook and\n"
            "# 'certbot-perms check' use for this lineage. Change it with\n"
            "# certbot-perms apply --key-group ... --key-mode ... NAME\n"
            + "".join(f"{opt.replace('-', '_')} = {value}\n"
                      for opt, value in spec.as_options().items()))
    where = os.path.join(config_dir, RECORD_DIR, f"{name}.conf")
    dir_fd = open_for_writing(os.path.join(os.path.abspath(config_dir), RECORD_DIR),
                              create_mode=RECORD_DIR_MODE)
    try:
        write_file_atomic(dir_fd, f"{name}.conf", body.encode(), uid=os.geteuid(),
                          gid=os.getegid(), mode=RECORD_FILE_MODE, where=where)
    finally:
        os.close(dir_fd)
    return True

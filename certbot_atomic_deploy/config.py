"""The deploy configuration: a configobj file checked against a validation spec.

Imports no certbot and no cryptography. Example (``/etc/letsencrypt/atomic-deploy.conf``)::

    [defaults]
    keep = 2

    [postfix]
    lineage = mail.example.org
    path = /etc/postfix/tls/mail.pem
    format = postfix            # key, then leaf, then chain: one file
    check = postfix check
    reload = postfix reload

    [web]
    domains = *.example.org
    directory = /etc/nginx/tls/example   # current -> vN/{privkey,cert,chain,fullchain,combined}.pem
    group = www-data
    mode = 0640
    reload = nginx -t && nginx -s reload

Every error names the file, the section and the key. Unknown keys and
sections are errors, not ignored.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import NamedTuple, TypeVar

from configobj import ConfigObj, ConfigObjError, flatten_errors, get_extra_values

try:
    from configobj.validate import Validator
except ImportError:  # configobj < 5.0.9 ships it as a top-level module
    from validate import Validator

from certbot_atomic_deploy.errors import ConfigError
from certbot_atomic_deploy.pem import FILE_FORMATS, FORMAT_ALIASES, holds_key
from certbot_atomic_deploy.presets import PRESETS, preset_mode_error
from certbot_perms.errors import SpecError
from certbot_perms.spec import parse_mode, resolve_group, resolve_user

T = TypeVar("T")

DEFAULT_KEEP = 2
KEY_FILE_MODE = 0o600
PUBLIC_FILE_MODE = 0o644
TARGET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_FORMATS = ", ".join(repr(f) for f in (*FILE_FORMATS, *FORMAT_ALIASES))

_PRESETS = ", ".join(repr(p) for p in PRESETS)
_TARGET_SPEC = f"""\
preset = option({_PRESETS}, default=None)
lineage = force_list(default=None)
domains = force_list(default=None)
path = string(default=None)
directory = string(default=None)
format = option({_FORMATS}, default=None)
owner = string(default=None)
group = string(default=None)
mode = string(default=None)
reload = force_list(default=None)
check = force_list(default=None)
keep = integer(min=0, max=100, default=None)
"""
CONFIGSPEC = ("[defaults]\n" + _TARGET_SPEC + "[__many__]\n" + _TARGET_SPEC).splitlines()
# Keys that only make sense per target, never in [defaults].
_TARGET_ONLY = ("path", "directory", "preset")


class Target(NamedTuple):
    name: str
    lineages: tuple[str, ...]
    domains: tuple[str, ...]
    path: str | None
    directory: str | None
    format: str | None  # canonical (aliases resolved); None for a directory target
    uid: int
    gid: int
    owner_name: str
    group_name: str
    key_mode: int
    reload: tuple[str, ...]
    check: tuple[str, ...]
    keep: int
    preset: str | None = None

    @property
    def destination(self) -> str:
        return self.path or self.directory or ""

    def describe(self) -> str:
        what = (f"file {self.path} ({self.format})" if self.path
                else f"directory {self.directory} (current -> vN/)")
        return what


class Config(NamedTuple):
    path: str
    targets: tuple[Target, ...]

    @property
    def state_dir(self) -> str:
        base = self.path[:-5] if self.path.endswith(".conf") else self.path
        return base + ".state"


def _spec_value(parse: Callable[[str, str], T], value: str, where: str) -> T:
    # The same rules as certbot-perms (users, groups, a key mode that gives others
    # nothing and the group at most read); certbot_perms.spec imports no certbot.
    try:
        return parse(value, where)
    except SpecError as exc:
        raise ConfigError(str(exc)) from None


def _absolute(value: str, where: str) -> str:
    if not os.path.isabs(value):
        raise ConfigError(f"{where}: '{value}' is not an absolute path")
    return os.path.normpath(value)


def _target(name: str, section: dict[str, object], defaults: dict[str, object],
            file: str) -> Target:
    preset_name = section.get("preset")
    preset = PRESETS[str(preset_name)].values if preset_name is not None else {}

    def get(key: str) -> object:
        # The target's own value, else its preset's, else [defaults].
        value = section.get(key)
        if value is None:
            value = preset.get(key)
        return defaults.get(key) if value is None else value

    def get_list(key: str) -> tuple[str, ...]:
        value = get(key)
        return tuple(str(v) for v in value) if isinstance(value, list) else ()

    def where(key: str) -> str:
        if section.get(key) is not None:
            return f"{file}: [{name}] {key}"
        if key in preset:
            return f"{file}: [{name}] {key} (from preset {preset_name})"
        return f"{file}: [defaults] {key}"

    if not TARGET_NAME.match(name):
        raise ConfigError(f"{file}: [{name}]: a target name may hold letters, digits, "
                          "'.', '_' and '-' only")
    lineages = get_list("lineage")
    domains = get_list("domains")
    if not lineages and not domains:
        raise ConfigError(f"{file}: [{name}]: say which lineage it takes: lineage = NAME "
                          "or domains = GLOB")
    for lineage in lineages:
        if "/" in lineage or lineage.startswith("."):
            raise ConfigError(f"{where('lineage')}: '{lineage}' is not a lineage name")
    path, directory = section.get("path"), section.get("directory")
    if (path is None) == (directory is None):
        raise ConfigError(f"{file}: [{name}]: give exactly one of path = FILE or "
                          "directory = DIR")
    fmt = get("format")
    if path is not None:
        if fmt is None:
            raise ConfigError(f"{file}: [{name}] format: missing; a file target needs one "
                              f"of {_FORMATS} (or a preset)")
        fmt = FORMAT_ALIASES.get(str(fmt), str(fmt))
    elif section.get("format") is not None:
        raise ConfigError(f"{where('format')}: a directory target holds every format; "
                          "remove format")
    else:
        fmt = None  # a preset's format is for file targets; a directory holds them all
    owner = get("owner")
    group = get("group")
    uid, owner_name = (_spec_value(resolve_user, str(owner), where("owner"))
                       if owner else (0, "root"))
    gid, group_name = (_spec_value(resolve_group, str(group), where("group"))
                       if group else (0, "root"))
    mode_value = get("mode")
    if mode_value is not None:
        key_mode = _spec_value(parse_mode, str(mode_value), where("mode"))
    else:
        key_mode = 0o640 if group else KEY_FILE_MODE
    if preset_name is not None:
        why = preset_mode_error(str(preset_name), key_mode)
        if why is not None:
            raise ConfigError(f"{where('mode')}: {why}")
        if PRESETS[str(preset_name)].root_owned and uid != 0:
            raise ConfigError(f"{where('owner')}: {preset_name} refuses a key file not owned "
                              f"by root ({PRESETS[str(preset_name)].why})")
    keep = get("keep")
    return Target(
        name=name, lineages=lineages, domains=domains,
        path=_absolute(str(path), where("path")) if path is not None else None,
        directory=(_absolute(str(directory), where("directory"))
                   if directory is not None else None),
        format=fmt, uid=uid, gid=gid, owner_name=owner_name, group_name=group_name,
        key_mode=key_mode,
        reload=get_list("reload"),
        check=get_list("check"),
        keep=DEFAULT_KEEP if keep is None else int(str(keep)),
        preset=str(preset_name) if preset_name is not None else None)


def file_mode(target: Target, fmt: str) -> int:
    """The mode of a published file: the target's key mode if it holds the key, else 0644."""
    return target.key_mode if holds_key(fmt) else PUBLIC_FILE_MODE


def load(path: str) -> Config:
    """Read and validate the configuration file; raise ConfigError naming what is wrong."""
    try:
        conf = ConfigObj(path, configspec=CONFIGSPEC, file_error=True, interpolation=False,
                         list_values=True, raise_errors=True)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror} (create it, or give "
                          "--config)") from None
    except ConfigObjError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    for key in conf.scalars:
        raise ConfigError(f"{path}: '{key}' is outside any section (put it in [defaults] "
                          "or a target section)")
    result = conf.validate(Validator(), preserve_errors=True)
    if result is not True:
        for sections, key, error in flatten_errors(conf, result):
            section = "/".join(sections)
            if key is None:
                raise ConfigError(f"{path}: [{section}]: missing section")
            reason = str(error) if error is not False else "missing"
            raise ConfigError(f"{path}: [{section}] {key}: {reason}")
    for sections, key in get_extra_values(conf):
        where = "/".join(sections)
        raise ConfigError(f"{path}: [{where}] {key}: unknown key (see "
                          "'certbot-atomic-deploy --help' for the keys a target takes)")
    defaults = dict(conf.get("defaults", {}))
    for key in _TARGET_ONLY:
        if defaults.get(key) is not None:
            raise ConfigError(f"{path}: [defaults] {key}: belongs in a target section")
    targets = tuple(_target(name, dict(conf[name]), defaults, path)
                    for name in conf.sections if name != "defaults")
    if not targets:
        raise ConfigError(f"{path}: no target sections (add one, e.g. [postfix] with "
                          "lineage, path and format)")
    destinations: dict[str, str] = {}
    for t in targets:
        if t.destination in destinations:
            raise ConfigError(f"{path}: [{t.name}] and [{destinations[t.destination]}] both "
                              f"write {t.destination}")
        destinations[t.destination] = t.name
    return Config(path=path, targets=targets)

"""The deploy configuration: a configobj file checked against a validation spec (SPEC).

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
import stat
from collections.abc import Callable
from typing import NamedTuple

from configobj import ConfigObj, ConfigObjError, Section

from certbot_atomic_deploy.dane import (
    DEFAULT_GRACE_DAYS,
    NEAR_EXPIRY,
    Dane,
    Server,
    Update,
    parse_server,
)
from certbot_atomic_deploy.pem import (
    DIRECTORY_FILES,
    FILE_FORMATS,
    FORMAT_ALIASES,
    KEYSTORE_FORMAT,
    holds_key,
    parse_blocks,
)
from certbot_atomic_deploy.presets import PRESETS, preset_mode_error
from certbot_atomic_deploy.probe import Probe, parse_probe
from certbot_atomic_deploy.publish import DEFAULT_KEEP_SECONDS
from daemon_keys.errors import ConfigError, SpecError, UnsafePathError, ValidationError
from daemon_keys.fs import open_dir, read_regular
from daemon_keys.keyspec import KeySpec, parse_spec, resolve_user
from daemon_keys.trust import file_check

DEFAULT_KEEP = 2
DEFAULT_PARALLEL = 8  # hosts pushed to at once
DEFAULT_CONNECT_TIMEOUT = 10  # seconds for ssh's connection and handshake
# commit = each: every host that staged commits; all: none commits unless every host
# taking that lineage staged.
COMMIT_POLICIES = ("each", "all")
DEFAULT_TIMEOUT = 300.0  # seconds a check or reload may run before its process group is killed
MAX_TIMEOUT = 86400
PUBLIC_FILE_MODE = 0o644
TARGET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\Z")
_FORMAT_NAMES = (*FILE_FORMATS, *FORMAT_ALIASES)


def _one(value: object, why: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"takes one value, not a list ({why})")
    return value


def _text(why: str) -> Callable[[object], object]:
    return lambda value: _one(value, why)


def _words(value: object) -> list[str]:
    # An empty value is an empty list: "reload =" in a target turns off its preset's.
    items = value if isinstance(value, list) else [value]
    return [str(v) for v in items if str(v).strip()]


def _choice(choices: tuple[str, ...]) -> Callable[[object], object]:
    def check(value: object) -> object:
        if _one(value, "one name") not in choices:
            raise ValueError(f"'{value}' is not one of {', '.join(choices)}")
        return value
    return check


def _timeout(value: object) -> object:
    text = _one(value, "a number of seconds")
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 1 <= seconds <= MAX_TIMEOUT:
        raise ValueError(f"'{text}' is not a number of seconds from 1 to {MAX_TIMEOUT}")
    return seconds


def _count(low: int, high: int) -> Callable[[object], object]:
    def check(value: object) -> object:
        text = _one(value, "a number")
        if not text.isdigit() or not low <= int(text) <= high:
            raise ValueError(f"'{text}' is not a number from {low} to {high}")
        return int(text)
    return check


def _probe_spec(value: object) -> object:
    return parse_probe(_one(value, "one HOST:PORT[/PROTO]"))


def _dns_server(value: object) -> object:
    return parse_server(_one(value, "one ADDRESS[:PORT]"))


def _keep(value: object) -> object:
    text = _one(value, "a number")
    if not text.isdigit() or not 0 <= int(text) <= 100:
        raise ValueError(f"'{text}' is not a number from 0 to 100")
    return int(text)


# The validation spec: every key a target section (or [defaults]) may hold, and how
# its value is checked; a key not here is an error. configobj splits a value at
# commas into a list, so a single-valued key refuses one that became a list.
SPEC: dict[str, Callable[[object], object]] = {
    "preset": _choice(tuple(PRESETS)),
    "lineage": _words,
    "domains": _words,
    "path": _text("quote a path that holds a comma"),
    "directory": _text("quote a path that holds a comma"),
    "format": _choice(_FORMAT_NAMES),
    "owner": _text("one user"),
    "group": _text("one group"),
    "mode": _text("one octal mode"),
    "reload": _words,
    "check": _words,
    "keep": _keep,
    "keep_seconds": _count(0, 10 * 365 * 86400),
    "timeout": _timeout,
    "metrics_file": _text("one path"),
    "issuers": _text("one path"),
    "reader": _text("one user"),
    "dont_blame_sendmail": _choice(("GroupReadableKeyFile",)),
    "password_file": _text("one path"),
    "host": _text("one [USER@]HOST[:PORT]"),
    "identity": _text("one path"),
    "known_hosts": _text("one path"),
    "connect_timeout": _count(1, 600),
    "parallel": _count(1, 256),
    "commit": _choice(COMMIT_POLICIES),
    "probe": _probe_spec,
    "tlsa": _words,
    "dns_server": _dns_server,
    "dnssec": _choice(("require", "off")),
    "tlsa_grace_days": _count(0, 365),
    "tlsa_near_expiry": _choice(NEAR_EXPIRY),
    "tlsa_update": _text("one path"),
    "tlsa_update_server": _dns_server,
    "tlsa_zone": _text("one zone name"),
}
_FORMATS = ", ".join(repr(f) for f in _FORMAT_NAMES)
# Keys that only make sense per target, never in [defaults]; and the other way round.
_TARGET_ONLY = ("path", "directory", "preset", "host", "probe", "tlsa")
_RUN_WIDE = ("metrics_file", "issuers", "parallel", "commit")
# What a host target's receiver decides in its own config: never the sender's.
_RECEIVER_ONLY = ("path", "directory", "format", "owner", "group", "mode", "check", "reload",
                  "reader", "password_file", "preset", "dont_blame_sendmail")
_PUSH_ONLY = ("identity", "known_hosts", "connect_timeout")
# What only a target with tlsa = (the DANE gate, certbot_atomic_deploy.dane) takes.
_DANE_ONLY = ("tlsa_grace_days", "tlsa_near_expiry", "tlsa_update", "tlsa_update_server",
              "tlsa_zone")


class FileOutput(NamedTuple):
    """A file target: one file in one format."""

    path: str
    format: str  # canonical (aliases resolved)
    password_file: str | None = None  # format = pkcs12 only

    @property
    def destination(self) -> str:
        return self.path

    def files(self) -> dict[str, str]:
        """File name -> format."""
        return {os.path.basename(self.path): self.format}

    def describe(self) -> str:
        return f"file {self.path} ({self.format})"


class DirectoryOutput(NamedTuple):
    """A versioned directory target: ``current -> vN/`` holding every format."""

    directory: str

    @property
    def destination(self) -> str:
        return self.directory

    def files(self) -> dict[str, str]:
        return dict(DIRECTORY_FILES)

    def describe(self) -> str:
        return f"directory {self.directory} (current -> vN/)"


class Target(NamedTuple):
    name: str
    lineage: str | None  # or None: the one lineage covering every ``domains`` glob
    domains: tuple[str, ...]
    output: FileOutput | DirectoryOutput
    key: KeySpec  # owner, group and mode of the files that hold the key
    reload: tuple[str, ...]
    check: tuple[str, ...]
    keep: int
    preset: str | None = None
    keep_seconds: int = DEFAULT_KEEP_SECONDS  # a versioned directory: see publish
    timeout: float = DEFAULT_TIMEOUT  # of each check and reload command
    reader: str | None = None  # the daemon's user: must open the key before any reload
    probe: Probe | None = None  # after the reload: the daemon must serve what was published
    dane: Dane | None = None  # tlsa =: the published TLSA records must vouch for a new key

    @property
    def destination(self) -> str:
        return self.output.destination

    def describe(self) -> str:
        return self.output.describe()

    def mode_of(self, fmt: str) -> int:
        """A published file's mode: the key's if it holds the key, else 0644."""
        return self.key.mode if holds_key(fmt) else PUBLIC_FILE_MODE


class HostTarget(NamedTuple):
    """A host a lineage is pushed to over ssh (``host =``). Its receiver's own config
    decides where the lineage goes there, with which owner, mode, check and reload."""

    name: str
    lineage: str | None  # or None: the one lineage covering every ``domains`` glob
    domains: tuple[str, ...]
    user: str
    host: str  # a name or an address (IPv6 without brackets)
    port: int
    identity: str  # the sender's private key (root's, 0600)
    known_hosts: str  # the pinned host keys: only these hosts are trusted
    connect_timeout: int = DEFAULT_CONNECT_TIMEOUT
    timeout: float = DEFAULT_TIMEOUT  # of each exchange with the host, its commands included
    keep: int = DEFAULT_KEEP
    probe: Probe | None = None  # after the commit: the host must serve what it committed
    dane: Dane | None = None  # tlsa =: the published TLSA records must vouch before a push

    @property
    def destination(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}:{self.port}"

    def describe(self) -> str:
        return f"host {self.destination} (over ssh; its receiver's config places it)"


class Config(NamedTuple):
    path: str
    targets: tuple[Target, ...]
    metrics_file: str | None = None  # rewritten by every run that writes state
    # The CA certificates (PEM) a lineage's chain must end at, when pinned ([defaults]
    # issuers = FILE): an ACME client that writes its own pair is not trusted.
    issuers: tuple[bytes, ...] | None = None
    hosts: tuple[HostTarget, ...] = ()
    parallel: int = DEFAULT_PARALLEL
    commit: str = "each"

    @property
    def everyone(self) -> list[Target | HostTarget]:
        """Every target, local ones first, then the hosts."""
        return [*self.targets, *self.hosts]

    @property
    def state_dir(self) -> str:
        return _beside(self.path, ".state")

    @property
    def store_dir(self) -> str:
        """Where ``receive`` keeps the lineages it is sent (certbot's layout)."""
        return store_dir_of(self.path)


def state_dir_of(path: str) -> str:
    """The state directory of the config at ``path`` (known without reading it)."""
    return _beside(os.path.realpath(path), ".state")


def store_dir_of(path: str) -> str:
    return _beside(os.path.realpath(path), ".store")


def _beside(path: str, suffix: str) -> str:
    return (path[:-5] if path.endswith(".conf") else path) + suffix


def ssh_dir_of(path: str) -> str:
    """Where the sender's ssh identity and pinned known_hosts are by default."""
    return _beside(path, ".ssh")


# Compiled when a host target is read (re caches it), not when the hook starts.
_HOST = (r"^(?:(?P<user>[A-Za-z0-9_][A-Za-z0-9._-]{0,31})@)?"
         r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9][A-Za-z0-9.-]{0,252}))"
         r"(?::(?P<port>[0-9]{1,5}))?$")


def _host_target(name: str, section: dict[str, object], defaults: dict[str, object],
                 file: str) -> HostTarget:
    """A ``host =`` section: which lineage goes to which host, and how ssh reaches it."""
    _check_name(name, file)
    for key in _RECEIVER_ONLY:
        if section.get(key) is not None:
            raise ConfigError(f"{file}: [{name}] {key}: a host target's {key} is its "
                              "receiver's to decide, in that host's own config; remove it "
                              "here")
    spec = str(section["host"])
    match = re.match(_HOST, spec)
    port = int(match.group("port") or 22) if match else 0
    if match is None or not 1 <= port <= 65535:
        raise ConfigError(f"{file}: [{name}] host: '{spec}' is not [USER@]HOST[:PORT] (an "
                          "IPv6 address in brackets: [2001:db8::1]:22)")

    def get(key: str) -> object:
        value = section.get(key)
        return defaults.get(key) if value is None else value

    def path(key: str, default: str) -> str:
        value = get(key)
        where = f"{file}: [{name if section.get(key) is not None else 'defaults'}] {key}"
        return default if value is None else _absolute(str(value), where)

    domains = tuple(str(v) for v in _words(get("domains") or []))
    lineage = _one_lineage([str(v) for v in _words(get("lineage") or [])], domains, name,
                           file, f"{file}: [{name}] lineage", " and host")
    ssh_dir = ssh_dir_of(file)
    keep, timeout, connect = get("keep"), get("timeout"), get("connect_timeout")
    return HostTarget(
        name=name, lineage=lineage, domains=domains, user=match.group("user") or "root",
        host=match.group("v6") or match.group("name"), port=port,
        identity=path("identity", os.path.join(ssh_dir, "id_ed25519")),
        known_hosts=path("known_hosts", os.path.join(ssh_dir, "known_hosts")),
        connect_timeout=DEFAULT_CONNECT_TIMEOUT if connect is None else int(str(connect)),
        timeout=DEFAULT_TIMEOUT if timeout is None else float(str(timeout)),
        keep=DEFAULT_KEEP if keep is None else int(str(keep)), probe=_probe_of(section),
        dane=_dane_of(name, section, defaults, file))


def _check_push_files(hosts: tuple[HostTarget, ...]) -> None:
    """The identity is the sender's own secret; known_hosts decides which hosts get a
    key: both as trusted as the config."""
    for identity in sorted({h.identity for h in hosts}):
        where = f"identity {identity}"
        secret = file_check(where, ConfigError, readers="owner",
                            stakes="it logs in to every host")

        def check(fd: int, st: os.stat_result, where: str = where,
                  secret: Callable[[int, os.stat_result], None] = secret) -> None:
            if st.st_uid != os.geteuid() or st.st_mode & 0o077:
                raise ConfigError(f"{where}: owner uid {st.st_uid}, mode "
                                  f"{stat.S_IMODE(st.st_mode):04o}: the sender's key must be "
                                  f"uid {os.geteuid()}'s and 0600 (chmod 600 it)")
            secret(fd, st)  # and no ACL entry lets anyone else read it

        read_regular(identity, limit=1 << 16, where=where, error=ConfigError,
                     hint=f"make one: ssh-keygen -t ed25519 -N '' -f {identity}; put its .pub "
                     "in each host's authorized_keys", check=check)
    for known in sorted({h.known_hosts for h in hosts}):
        if not os.path.exists(known):
            raise ConfigError(f"known_hosts {known}: missing; pin each host's key in it "
                              "(ssh-keyscan -p PORT HOST >> FILE, then compare the "
                              "fingerprint with the host's own 'ssh-keygen -lf')")
        _read_trusted(known, "it decides which hosts are sent keys")


def _absolute(value: str, where: str) -> str:
    if not os.path.isabs(value):
        raise ConfigError(f"{where}: '{value}' is not an absolute path")
    path = os.path.normpath(value)
    if path in ("/", "//"):
        raise ConfigError(f"{where}: '{value}' is the root directory; name a file or "
                          "directory of its own")
    return path


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

    _check_name(name, file)
    domains = get_list("domains")
    lineage = _one_lineage(list(get_list("lineage")), domains, name, file, where("lineage"),
                           ", each with its own path")
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
    # The rules and defaults of every key spec (daemon_keys.keyspec): a config
    # error here, exit 2, like certbot-perms' options.
    try:
        owner, group, mode = (None if get(k) is None else str(get(k))
                              for k in ("owner", "group", "mode"))
        key = parse_spec(owner, group, mode, all_defaults=True,
                         names=(where("owner"), where("group"), where("mode")))
    except SpecError as exc:
        raise ConfigError(str(exc)) from None
    widened = get("dont_blame_sendmail") is not None
    if widened and preset_name != "sendmail":
        raise ConfigError(f"{where('dont_blame_sendmail')}: only a preset = sendmail target "
                          "takes it")
    if preset_name is not None:
        why = preset_mode_error(str(preset_name), key.mode, widened)
        if why is not None:
            raise ConfigError(f"{where('mode')}: {why}")
        if PRESETS[str(preset_name)].root_owned and key.uid != 0:
            raise ConfigError(f"{where('owner')}: {preset_name} refuses a key file not owned "
                              f"by root ({PRESETS[str(preset_name)].why})")
    reader = get("reader")
    if reader is not None:
        try:
            resolve_user(str(reader), where("reader"))
        except SpecError as exc:
            raise ConfigError(str(exc)) from None
    password_file = get("password_file")
    if fmt == KEYSTORE_FORMAT and password_file is None:
        raise ConfigError(f"{file}: [{name}] password_file: missing; a pkcs12 target needs "
                          "a file holding the keystore password (mode 0600, root's)")
    if fmt != KEYSTORE_FORMAT and section.get("password_file") is not None:
        raise ConfigError(f"{file}: [{name}] password_file: only a format = pkcs12 target "
                          "takes one")
    keep, keep_seconds = get("keep"), get("keep_seconds")
    output: FileOutput | DirectoryOutput
    if path is not None:
        output = FileOutput(
            path=_absolute(str(path), where("path")), format=str(fmt),
            password_file=(_absolute(str(password_file), where("password_file"))
                           if fmt == KEYSTORE_FORMAT else None))
    else:
        output = DirectoryOutput(directory=_absolute(str(directory), where("directory")))
    if preset_name is not None and PRESETS[str(preset_name)].no_writable_dirs:
        _refuse_writable_dirs(output.destination, str(preset_name),
                              where("path" if path is not None else "directory"))
    return Target(
        name=name, lineage=lineage, domains=domains, output=output, key=key,
        reload=get_list("reload"),
        check=get_list("check"),
        keep=DEFAULT_KEEP if keep is None else int(str(keep)),
        keep_seconds=(DEFAULT_KEEP_SECONDS if keep_seconds is None
                      else int(str(keep_seconds))),
        timeout=DEFAULT_TIMEOUT if get("timeout") is None else float(str(get("timeout"))),
        reader=None if reader is None else str(reader),
        probe=_probe_of(section),
        dane=_dane_of(name, section, defaults, file),
        preset=str(preset_name) if preset_name is not None else None)


def _dane_of(name: str, section: dict[str, object], defaults: dict[str, object],
             file: str) -> Dane | None:
    """A target's TLSA gate: ``tlsa =`` and the keys beside it (dns_server and dnssec
    may come from [defaults]; the rest belong to the target)."""
    names = tuple(n.rstrip(".") for n in _words(section.get("tlsa") or []))
    if not names:
        for key in _DANE_ONLY:
            if section.get(key) is not None or defaults.get(key) is not None:
                raise ConfigError(f"{file}: [{name}] {key}: only a target with tlsa = "
                                  "_PORT._tcp.HOST takes it")
        return None
    for n in names:
        if not re.match(r"^_[0-9]{1,5}\._(tcp|udp|sctp)\.[A-Za-z0-9*._-]+\Z", n):
            raise ConfigError(f"{file}: [{name}] tlsa: '{n}' is not a TLSA owner name "
                              "(_PORT._tcp.HOST, e.g. _25._tcp.mx.example.org)")

    def get(key: str) -> object:
        value = section.get(key)
        return defaults.get(key) if value is None else value

    update = None
    key_file = get("tlsa_update")
    if key_file is not None:
        where = f"{file}: [{name}] tlsa_update"
        primary, zone = get("tlsa_update_server"), get("tlsa_zone")
        if not isinstance(primary, Server) or zone is None:
            raise ConfigError(f"{where}: also give tlsa_update_server = ADDRESS[:PORT] (the "
                              "zone's primary) and tlsa_zone = ZONE")
        zone_name = str(zone).rstrip(".")
        outside = [n for n in names if not (n == zone_name or n.endswith("." + zone_name))]
        if outside:
            raise ConfigError(f"{file}: [{name}] tlsa_zone: {', '.join(outside)} is not in "
                              f"zone {zone_name}")
        # The key file itself is read where it is used (the gate, before it asks DNS;
        # check-config): a bad one holds its own target, not every target of the run.
        update = Update(_absolute(str(key_file), where), primary, zone_name)
    elif get("tlsa_update_server") is not None or get("tlsa_zone") is not None:
        raise ConfigError(f"{file}: [{name}] tlsa_update: missing; tlsa_update_server and "
                          "tlsa_zone publish through it (RFC 2136 with a TSIG key file)")
    server, grace, rule = get("dns_server"), get("tlsa_grace_days"), get("tlsa_near_expiry")
    return Dane(names=names, server=server if isinstance(server, Server) else None,
                dnssec=get("dnssec") == "require",
                grace_days=DEFAULT_GRACE_DAYS if grace is None else int(str(grace)),
                near_expiry="switch" if rule is None else str(rule), update=update)


def _probe_of(section: dict[str, object]) -> Probe | None:
    """A target's own probe (never from [defaults]: each daemon has its own address)."""
    probe = section.get("probe")
    return probe if isinstance(probe, Probe) else None


def _check_name(name: str, file: str) -> None:
    if not TARGET_NAME.match(name):
        raise ConfigError(f"{file}: [{name}]: a target name may hold letters, digits, "
                          "'.', '_' and '-' only")


def _one_lineage(lineages: list[str], domains: tuple[str, ...], name: str, file: str,
                 where: str, each: str) -> str | None:
    """The one lineage a target names (or None: its ``domains`` choose it)."""
    if not lineages and not domains:
        raise ConfigError(f"{file}: [{name}]: say which lineage it takes: lineage = NAME "
                          "or domains = GLOB")
    if len(lineages) > 1:
        raise ConfigError(f"{where}: names {len(lineages)} lineages; a target takes one "
                          f"(make one section per lineage{each})")
    lineage = lineages[0] if lineages else None
    if lineage is not None and ("/" in lineage or lineage.startswith(".")):
        raise ConfigError(f"{where}: '{lineage}' is not a lineage name")
    return lineage


def _refuse_writable_dirs(destination: str, preset: str, where: str) -> None:
    """For a daemon that refuses a key below any world-writable directory (sendmail):
    the directories above the destination that exist."""
    directory = os.path.dirname(destination)
    while True:
        try:
            st = os.stat(directory)
        except OSError:
            st = None
        if st is not None and st.st_mode & stat.S_IWOTH:
            raise ConfigError(f"{where}: {directory} is world-writable (mode "
                              f"{stat.S_IMODE(st.st_mode):04o}), and {preset} refuses a key "
                              f"below such a directory, sticky or not ({PRESETS[preset].why})")
        if directory == "/":
            return
        directory = os.path.dirname(directory)


MAX_PASSWORD_BYTES = 1024


def read_password(target_name: str, password_file: str) -> bytes:
    """A pkcs12 target's keystore password: its file's first line, which must be non-empty.

    The file is a secret like the key: refused if it is a symlink, not a regular
    file, or readable by others than its owner and group or writable by others
    than root (mode bits and ACL entries: :mod:`daemon_keys.trust`).
    A bad password file is a config error (exit 2) wherever it is read.
    """
    where = f"[{target_name}] password_file {password_file}"
    _, data = read_regular(password_file, limit=MAX_PASSWORD_BYTES, where=where,
                           error=ConfigError,
                           hint="create it with: install -m 600 /dev/null FILE, then write "
                                "the password into it",
                           check=file_check(where, ConfigError, readers="group",
                                            stakes="the password opens the keystore"))
    password = data.split(b"\n", 1)[0].rstrip(b"\r")
    if not password:
        raise ConfigError(f"{where}: put the password on the first line (1 to "
                          f"{MAX_PASSWORD_BYTES} bytes)")
    if not all(0x20 <= b < 0x7F for b in password):
        # Java derives PBES2 keys only from ASCII passwords ("Password is not ASCII").
        raise ConfigError(f"{where}: the password holds characters other than printable "
                          "ASCII, which Java cannot open a PBES2 keystore with (use "
                          "letters, digits and punctuation, e.g. openssl rand -base64 24)")
    return password


def _checked(path: str, name: str, section: Section) -> dict[str, object]:
    """One section's values checked against SPEC (in file order)."""
    for sub in section.sections:
        raise ConfigError(f"{path}: [{name}] [[{sub}]]: unknown subsection (targets are "
                          "top-level sections)")
    values: dict[str, object] = {}
    for key in section.scalars:
        check = SPEC.get(key)
        if check is None:
            raise ConfigError(f"{path}: [{name}] {key}: unknown key (see "
                              "'certbot-atomic-deploy --help' for the keys a target takes)")
        try:
            values[key] = check(section[key])
        except ValueError as exc:
            raise ConfigError(f"{path}: [{name}] {key}: {exc}") from None
    return values


MAX_CONFIG_BYTES = 1 << 20
# Certbot's default work and logs dirs: its own files, never a target's.
CERTBOT_DIRS = ("/var/lib/letsencrypt", "/var/log/letsencrypt")


def _read_trusted(path: str, stakes: str = "its check and reload commands run as uid {euid}"
                  ) -> str:
    """The text of a file only root (or the user running the deploy) can change, read
    through descriptors: the config (its ``check`` and ``reload`` commands run as that
    user), or what else decides what is published (``stakes`` says what). The file and
    every directory above it must pass :mod:`daemon_keys.trust` (mode bits and ACLs)."""
    euid = os.geteuid()
    stakes = stakes.format(euid=euid)
    if os.path.isdir(path):
        raise ConfigError(f"{path}: is a directory; give the config file itself (e.g. "
                          f"--config {os.path.join(path, 'atomic-deploy.conf')})")
    directory, name = os.path.split(path)
    try:
        dir_fd = open_dir(directory, writer_uid=euid)
    except UnsafePathError as exc:
        if not os.path.exists(path):
            raise ConfigError(f"{path}: cannot read: missing (create it, or give --config)"
                              ) from None
        raise ConfigError(f"{path}: refused: {exc}") from None
    try:
        _, data = read_regular(name, dir_fd=dir_fd, limit=MAX_CONFIG_BYTES, where=path,
                               error=ConfigError, hint="create it, or give --config",
                               check=file_check(path, ConfigError, stakes=stakes))
    finally:
        os.close(dir_fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _check_destinations(config: Config, config_dir: str) -> None:
    """No destination (nor the metrics file) inside certbot's dirs or our state, and
    no destination inside (or over) another's."""
    path, targets = config.path, config.targets
    real = {t.name: os.path.realpath(t.destination) for t in targets}
    protected = [(os.path.realpath(d), what) for d, what in (
        (config_dir, "certbot's config dir"), (config.state_dir, "this config's run state"),
        *((d, "certbot's own directory") for d in CERTBOT_DIRS))]

    def where(t: Target) -> str:
        return f"{path}: [{t.name}] {'path' if isinstance(t.output, FileOutput) else 'directory'}"

    for directory, what in protected:
        if config.metrics_file and _inside(os.path.realpath(config.metrics_file), directory):
            raise ConfigError(f"{path}: [defaults] metrics_file: {config.metrics_file} would "
                              f"write into {what} {directory}; put it in node_exporter's "
                              "textfile directory")
        for t in targets:
            if _inside(real[t.name], directory) or (
                    isinstance(t.output, DirectoryOutput) and _inside(directory, real[t.name])):
                raise ConfigError(f"{where(t)}: {t.destination} would write into {what} "
                                  f"{directory}; publish outside it (e.g. under /etc/ssl or "
                                  "the daemon's own config dir)")
    for t in targets:
        if config.metrics_file and _inside(os.path.realpath(config.metrics_file),
                                           real[t.name]):
            raise ConfigError(f"{path}: [defaults] metrics_file: {config.metrics_file} is "
                              f"[{t.name}]'s destination; give it a path of its own")
        for other in targets:
            if other.name != t.name and _inside(real[t.name], real[other.name]):
                raise ConfigError(f"{where(t)}: {t.destination} is inside [{other.name}]'s "
                                  f"{other.destination}; give each target its own path")


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _check_inputs(config: Config, extra: list[tuple[str, str]]) -> None:
    """No target writes over (or into a directory holding) a file the suite itself reads:
    the config, a password file, a TSIG key, the identity, known_hosts, the pinned
    issuers, the receiver's store, the metrics file. Compared by identity (device and
    inode, so a second name or a bind mount is caught) and, for a versioned directory,
    by where the input really lives."""
    inputs: list[tuple[str, str]] = [(config.path, "this config itself"), *extra]
    if config.metrics_file:
        inputs.append((config.metrics_file, "[defaults] metrics_file"))
    for t in config.targets:
        if isinstance(t.output, FileOutput) and t.output.password_file:
            inputs.append((t.output.password_file, f"[{t.name}] password_file"))
        if t.dane is not None and t.dane.update is not None:
            inputs.append((t.dane.update.key_file, f"[{t.name}] tlsa_update"))
    for h in config.hosts:
        inputs += [(h.identity, f"[{h.name}] identity"),
                   (h.known_hosts, f"[{h.name}] known_hosts")]
        if h.dane is not None and h.dane.update is not None:
            inputs.append((h.dane.update.key_file, f"[{h.name}] tlsa_update"))
    inputs.append((config.store_dir, "the receiver's store"))
    known = {}
    for path, what in inputs:
        ident = _identity(path)
        if ident is not None:
            known[ident] = (path, what)
    real_inputs = [(os.path.realpath(path), path, what) for path, what in inputs]
    for t in config.targets:
        field = "path" if isinstance(t.output, FileOutput) else "directory"
        where = f"{config.path}: [{t.name}] {field}"
        hit = known.get(_identity(t.destination) or (-1, -1))
        if hit is None and isinstance(t.output, DirectoryOutput):
            real = os.path.realpath(t.destination)
            hit = next(((p, w) for r, p, w in real_inputs if _inside(r, real)), None)
        if hit is not None:
            raise ConfigError(f"{where}: {t.destination} would write over {hit[1]} "
                              f"({hit[0]}), which this suite reads; give the target a path "
                              "of its own")


def _issuers(path: str) -> tuple[bytes, ...]:
    """The pinned CA certificates: a file as trusted as the config, of CERTIFICATE blocks."""
    text = _read_trusted(path, "it decides which certificates are published")
    try:
        blocks = parse_blocks(text.encode(), path)
    except ValidationError as exc:
        raise ConfigError(f"[defaults] issuers: {exc}") from None
    if not blocks or any(b.label != "CERTIFICATE" for b in blocks):
        raise ConfigError(f"{path}: [defaults] issuers: expected CA certificates (PEM "
                          "CERTIFICATE blocks) only")
    return tuple(b.text for b in blocks)


def load(path: str, config_dir: str) -> Config:
    """Read and validate the configuration file; raise ConfigError naming what is wrong.

    ``path`` is resolved first (relative, or a symlink): the state and lock
    beside it are the real file's, however it is named. ``config_dir`` is
    certbot's, which no target may write into.
    """
    path = os.path.realpath(path)
    try:
        conf = ConfigObj(_read_trusted(path).splitlines(), interpolation=False,
                         list_values=True, raise_errors=True)
    except ConfigObjError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    for key in conf.scalars:
        raise ConfigError(f"{path}: '{key}' is outside any section (put it in [defaults] "
                          "or a target section)")
    sections = {name: _checked(path, name, conf[name]) for name in conf.sections}
    defaults = sections.pop("defaults", {})
    for key in _TARGET_ONLY:
        if defaults.get(key) is not None:
            raise ConfigError(f"{path}: [defaults] {key}: belongs in a target section")
    for name, section in sections.items():
        for key in _PUSH_ONLY:
            if section.get("host") is None and section.get(key) is not None:
                raise ConfigError(f"{path}: [{name}] {key}: only a host target (host = "
                                  "[USER@]HOST[:PORT]) takes it")
    for name, section in sections.items():
        for key in _RUN_WIDE:
            if section.get(key) is not None:
                raise ConfigError(f"{path}: [{name}] {key}: one for the whole run; put it "
                                  "in [defaults]")
    metrics = defaults.get("metrics_file")
    metrics_file = (None if metrics is None else
                    _absolute(str(metrics), f"{path}: [defaults] metrics_file"))
    issuers = defaults.get("issuers")
    issuers_file = (None if issuers is None else
                    _absolute(str(issuers), f"{path}: [defaults] issuers"))
    pinned = None if issuers_file is None else _issuers(issuers_file)
    targets = tuple(_target(name, section, defaults, path)
                    for name, section in sections.items() if section.get("host") is None)
    hosts = tuple(_host_target(name, section, defaults, path)
                  for name, section in sections.items() if section.get("host") is not None)
    if not targets and not hosts:
        raise ConfigError(f"{path}: no target sections (add one, e.g. [postfix] with "
                          "lineage, path and format)")
    destinations: dict[str, str] = {}
    for t in targets:
        if t.destination in destinations:
            raise ConfigError(f"{path}: [{t.name}] and [{destinations[t.destination]}] both "
                              f"write {t.destination}")
        destinations[t.destination] = t.name
    pushed: dict[tuple[str, str | None, tuple[str, ...]], str] = {}
    for h in hosts:
        other = pushed.setdefault((h.destination, h.lineage, h.domains), h.name)
        if other != h.name:
            raise ConfigError(f"{path}: [{h.name}] and [{other}] both push the same lineage "
                              f"to {h.destination}")
    if hosts:
        _check_push_files(hosts)
    parallel, commit = defaults.get("parallel"), defaults.get("commit")
    config = Config(path=path, targets=targets, metrics_file=metrics_file, issuers=pinned,
                    hosts=hosts,
                    parallel=DEFAULT_PARALLEL if parallel is None else int(str(parallel)),
                    commit="each" if commit is None else str(commit))
    _check_destinations(config, config_dir)
    _check_inputs(config, [(issuers_file, "[defaults] issuers")] if issuers_file else [])
    return config

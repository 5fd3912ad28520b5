"""systemd units for the split setup (README: "Least privilege"), made from the config.

Imports no certbot and no cryptography. ``certbot-atomic-deploy units`` writes:

- ``certbot.service.d/least-privilege.conf``: a drop-in that runs Debian's
  ``certbot.service`` as certbot's own user, able to write its three
  directories and the spool and nothing else, with no capabilities;
- ``certbot-atomic-deploy.service``: the root side, oneshot, running
  ``deploy --spool``; it may write only the targets' directories, its own
  state and metrics file, and the spool (to take the markers away), keeping
  the few capabilities publishing needs. Made from the config, so a new
  target directory is one ``units`` run away and never drifts;
- ``certbot-atomic-deploy.path``: starts it when the spool is not empty
  (``DirectoryNotEmpty=``: a marker dropped while the service runs is still
  there when it ends, and starts it again; ``PathChanged=`` would drop it);
- ``certbot-atomic-deploy.timer``: hourly, for anything the path unit missed.
"""
from __future__ import annotations

import os

from certbot_atomic_deploy.config import Config, FileOutput
from daemon_keys.atomicfile import open_for_writing, write_file_atomic

CERTBOT_DIRS = ("/etc/letsencrypt", "/var/lib/letsencrypt", "/var/log/letsencrypt")
# What publishing needs as root: chown/chmod what it writes, read and write in
# directories others own (certbot's, the daemons'), signal daemons in reloads,
# and setuid to open a key as the daemon's user (reader =).
DEPLOY_CAPABILITIES = ("CAP_CHOWN", "CAP_FOWNER", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH",
                       "CAP_KILL", "CAP_SETUID", "CAP_SETGID")
_HARDENING = """\
ProtectHome=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictRealtime=yes
LockPersonality=yes
SystemCallArchitectures=native
"""


def certbot_dropin(user: str, spool: str) -> str:
    """The drop-in for Debian's certbot.service: certbot as ``user``, no privilege."""
    return f"""\
# Written by certbot-atomic-deploy units. Runs Debian's certbot.service as {user}
# (README: "Least privilege"): it may write its own directories and the spool its
# deploy hook (certbot-atomic-deploy notify) signals through, and nothing else; it
# never restarts a server and holds no capability.
[Service]
User={user}
Group={user}
ProtectSystem=strict
ReadWritePaths={' '.join(CERTBOT_DIRS)} {spool}
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
RestrictSUIDSGID=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
PrivateTmp=yes
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
# certbot gives a renewed key its predecessor's owner and mode with chown (to itself:
# without CAP_CHOWN the kernel refuses anything else); without it, it dies mid-renewal.
SystemCallFilter=@chown
# A call outside the filter fails; it does not kill certbot halfway through a lineage.
SystemCallErrorNumber=EPERM
UMask=0022
{_HARDENING}"""


def writable_paths(config: Config) -> list[str]:
    """What the root side writes: each target's directory (a file target's parent,
    a versioned directory itself), the state directory, the metrics file's directory."""
    paths = {config.state_dir}
    for target in config.targets:
        output = target.output
        paths.add(os.path.dirname(output.path) if isinstance(output, FileOutput)
                  else output.directory)
    if config.metrics_file is not None:
        paths.add(os.path.dirname(config.metrics_file))
    return sorted(paths)


def deploy_service(config: Config, config_dir: str, spool: str, program: str) -> str:
    """The root side's oneshot service, for this config."""
    paths = (*writable_paths(config), spool)
    writable = " ".join(_quoted(p) for p in paths)
    # A private /tmp would hide a target written there from everyone else.
    private_tmp = "" if any(_inside(p, t) for p in paths for t in ("/tmp", "/var/tmp")) \
        else "PrivateTmp=yes\n"
    return f"""\
# Written by certbot-atomic-deploy units from {config.path}:
# run it again after adding a target in a new directory (README: "Least privilege").
[Unit]
Description=Publish certbot's certificates where each daemon wants them (root side)
After=network.target
# The path unit may start it often; never let a burst stop it watching.
StartLimitIntervalSec=0

[Service]
Type=oneshot
ExecStart={program} --config {_quoted(config.path)} --config-dir {_quoted(config_dir)} \
deploy --spool {_quoted(spool)}
ProtectSystem=strict
ReadWritePaths={writable}
CapabilityBoundingSet={' '.join(DEPLOY_CAPABILITIES)}
UMask=0022
{private_tmp}{_HARDENING}"""


def path_unit(spool: str) -> str:
    return f"""\
# Written by certbot-atomic-deploy units: start the root side when the unprivileged
# certbot signals. DirectoryNotEmpty= (not PathChanged=): a marker dropped while the
# service runs is still there when it ends, and starts it again.
[Unit]
Description=Publish certificates when certbot signals through {spool}

[Path]
DirectoryNotEmpty={spool}
Unit=certbot-atomic-deploy.service

[Install]
WantedBy=paths.target
"""


TIMER = """\
# Written by certbot-atomic-deploy units: the backstop for anything the path unit
# missed (a run that failed, a change while nothing watched).
[Unit]
Description=Publish certificates hourly, whatever was signalled

[Timer]
OnCalendar=hourly
RandomizedDelaySec=5min
Persistent=true
Unit=certbot-atomic-deploy.service

[Install]
WantedBy=timers.target
"""


def all_units(config: Config, config_dir: str, spool: str, program: str,
              user: str) -> dict[str, str]:
    """Relative path -> text of every unit ``units`` writes."""
    return {
        "certbot.service.d/least-privilege.conf": certbot_dropin(user, spool),
        "certbot-atomic-deploy.service": deploy_service(config, config_dir, spool, program),
        "certbot-atomic-deploy.path": path_unit(spool),
        "certbot-atomic-deploy.timer": TIMER,
    }


def write_units(directory: str, units: dict[str, str]) -> list[str]:
    """Write each unit (0644, atomically) below ``directory``; return their paths."""
    written = []
    os.close(open_for_writing(directory.rstrip("/") or "/", create_mode=0o755))
    for name, text in units.items():
        parent = os.path.join(directory, os.path.dirname(name))
        dir_fd = open_for_writing(parent.rstrip("/"), create_mode=0o755)
        try:
            path = os.path.join(directory, name)
            write_file_atomic(dir_fd, os.path.basename(name), text.encode(), uid=os.geteuid(),
                              gid=os.getegid(), mode=0o644, where=path)
        finally:
            os.close(dir_fd)
        written.append(path)
    return written


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory + "/")


def _quoted(path: str) -> str:
    """A path as one systemd word (quoted when it holds a space or a quote)."""
    if any(c in path for c in " \t\"'\\"):
        return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return path

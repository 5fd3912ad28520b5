"""The run state as Prometheus metrics, for node_exporter's textfile collector.

Imports no certbot and no cryptography. Certbot exits 0 when a deploy hook
fails, so monitoring cannot rely on its exit code or logs: every run that
writes state also rewrites the file named by ``metrics_file`` in
``[defaults]`` (atomically, mode 0644: it holds names, dates and serials,
never key material), and ``status --prometheus`` prints the same text.
"""
from __future__ import annotations

import datetime
import os

from certbot_atomic_deploy.state import PENDING
from daemon_keys.atomicfile import open_for_writing, write_file_atomic

METRICS_FILE_MODE = 0o644
PREFIX = "certbot_atomic_deploy"
RESULTS = ("published", "unchanged", "failed", "rolled-back", "held", "waiting")
# name, type, help
_METRICS = (
    ("target_info", "gauge", "One per target: its lineage, destination, serial and preset."),
    ("target_not_after_timestamp_seconds", "gauge",
     "When the published certificate expires (Unix time)."),
    ("target_published_timestamp_seconds", "gauge", "When the target was last published."),
    ("target_version", "gauge", "The lineage's archive version the target holds."),
    ("target_in_sync", "gauge",
     "1 when the target holds its lineage's current version and nothing is pending."),
    ("target_pending", "gauge",
     "1 while a check or reload of the published target has not run yet, or (a host "
     "target) the lineage's version is not committed on the host yet (label: what)."),
    ("target_pending_since_timestamp_seconds", "gauge", "Since when it has been pending."),
    ("target_last_result", "gauge",
     "1 for the result of the last run that took the target (label: result)."),
    ("target_last_result_timestamp_seconds", "gauge", "When that result was reached."),
    ("target_probe_ok", "gauge",
     "1 when the last probe found the daemon (or host) serving what was published, 0 when "
     "not; absent for a target without a probe or not probed yet."),
    ("target_probe_timestamp_seconds", "gauge", "When the last probe ran."),
    ("target_tlsa_held", "gauge",
     "1 while the DANE gate holds the target's switch to a new key (tlsa =), 0 when not; "
     "absent for a target without tlsa."),
    ("target_tlsa_publish", "gauge",
     "1 per TLSA record that would let a held switch go (label: record, zone-file form)."),
)


def _label(value: object) -> str:
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _timestamp(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return f"{when.timestamp():.0f}"


def render(rows: list[dict[str, object]]) -> str:
    """The text exposition format for ``status`` rows."""
    samples: dict[str, list[str]] = {name: [] for name, _, _ in _METRICS}

    def add(metric: str, labels: dict[str, object], value: str | None) -> None:
        if value is not None:
            inner = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            samples[metric].append(f"{PREFIX}_{metric}{{{inner}}} {value}")

    for r in rows:
        target = {"target": r["target"]}
        add("target_info", {**target, "lineage": r["lineage"], "destination": r["destination"],
                            "serial": r["serial"]}, "1")
        add("target_not_after_timestamp_seconds", target, _timestamp(r["not_after"]))
        add("target_published_timestamp_seconds", target, _timestamp(r.get("published_at")))
        add("target_version", target,
            None if r["version"] is None else str(r["version"]))
        add("target_in_sync", target, "1" if r["in_sync"] else "0")
        for what in PENDING:
            add("target_pending", {**target, "what": what},
                "1" if r.get("pending") == what else "0")
        add("target_pending_since_timestamp_seconds", target,
            _timestamp(r.get("pending_since")))
        if r.get("last_result") is not None:
            for result in RESULTS:
                add("target_last_result", {**target, "result": result},
                    "1" if r["last_result"] == result else "0")
            add("target_last_result_timestamp_seconds", target,
                _timestamp(r.get("last_run_at")))
        if "tlsa_held" in r:
            add("target_tlsa_held", target, "0" if r["tlsa_held"] is None else "1")
            for record in r["tlsa_publish"] if isinstance(r["tlsa_publish"], list) else ():
                add("target_tlsa_publish", {**target, "record": record}, "1")
        if r.get("probe_ok") is not None:
            add("target_probe_ok", target, "1" if r["probe_ok"] else "0")
            add("target_probe_timestamp_seconds", target, _timestamp(r.get("probe_at")))
    lines = []
    for name, kind, text in _METRICS:
        lines += [f"# HELP {PREFIX}_{name} {text}", f"# TYPE {PREFIX}_{name} {kind}",
                  *samples[name]]
    return "\n".join(lines) + "\n"


def write(path: str, text: str) -> None:
    """Replace ``path`` atomically (node_exporter never reads half a file), 0644."""
    directory, name = os.path.split(path)
    # The textfile directory may belong to the exporter's user (Debian's does not,
    # others' may): the file is public, and written by descriptor, temp and rename.
    try:
        owner = os.lstat(directory).st_uid
    except OSError:
        owner = 0  # the walk says what is wrong with it
    dir_fd = open_for_writing(directory, owner_uid=owner)
    try:
        write_file_atomic(dir_fd, name, text.encode(), uid=os.geteuid(), gid=os.getegid(),
                          mode=METRICS_FILE_MODE, where=path)
    finally:
        os.close(dir_fd)

"""The systemd units shipped in hooks/systemd/ are exactly what `units` writes for the
default user and spool (so they never drift from the generator); the service, which
depends on the config, is never shipped, only generated."""
from __future__ import annotations

from pathlib import Path

from certbot_atomic_deploy import units
from certbot_atomic_deploy.spool import DEFAULT_SPOOL

SHIPPED = Path(__file__).parent.parent / "hooks" / "systemd"


def test_the_shipped_units_are_the_generators_for_the_defaults() -> None:
    expected = {
        "certbot.service.d/least-privilege.conf": units.certbot_dropin("certbot", DEFAULT_SPOOL),
        "certbot-atomic-deploy.path": units.path_unit(DEFAULT_SPOOL),
        "certbot-atomic-deploy.timer": units.TIMER,
    }
    shipped = {str(p.relative_to(SHIPPED)): p.read_text() for p in SHIPPED.rglob("*")
               if p.is_file()}
    assert shipped == expected

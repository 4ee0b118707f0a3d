"""The shipped systemd unit: what the daemon relies on, and its sandbox's exposure score."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "mail2sms.service"


def directives() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith(("#", "[")):
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_the_unit_matches_what_the_daemon_does():
    unit = directives()
    assert unit["Type"] == ["notify"]  # READY=1 after recovery and bind (mail2sms/notify.py)
    assert unit["NotifyAccess"] == ["main"]
    assert unit["WatchdogSec"] == ["30s"]  # pinged from the event loop every 15 s
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]  # SIGHUP re-reads the config
    assert unit["RestartPreventExitStatus"] == ["78"]  # no restart loop on a bad config
    assert unit["LoadCredential"] == ["provider_token:/etc/mail2sms/provider_token"]
    assert unit["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]  # port 25, nothing else
    assert unit["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]  # notify + network


def test_the_sandbox_exposure_is_ok():
    analyze = shutil.which("systemd-analyze")
    unit = directives()
    for key in ("ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "NoNewPrivileges"):
        assert key in unit
    if analyze is None:  # no systemd here: the directives above are what can be checked
        return
    result = subprocess.run(
        [analyze, "security", "--offline=true", str(UNIT)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for mail2sms\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0

"""`make dev`'s banner prints a ready API key (issue 15): it works against the running
stack, and the next start of the same store prints the same key."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

from tests.e2e.dev_process import DevProcess


def banner_key(dev: DevProcess, start: int) -> str:
    """The KEY= line of the banner this start printed (dev.log is appended per start)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        lines = (dev.folder / "dev.log").read_text().splitlines()[start:]
        keys = [line.strip().removeprefix("KEY=") for line in lines
                if line.strip().startswith("KEY=")]
        if keys:
            return keys[-1]
        time.sleep(0.2)
    raise AssertionError("no KEY= line in the banner")


def own_key(dev: DevProcess, secret: str) -> dict[str, str]:
    request = urllib.request.Request(  # noqa: S310 - loopback http
        f"{dev.api}/key", headers={"Authorization": f"Bearer {secret}"})
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
        return dict(json.loads(response.read())["data"])


def log_lines(folder: Path) -> int:
    log = folder / "dev.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_the_banner_key_calls_the_stack_and_survives_a_restart(tmp_path: Path) -> None:
    with DevProcess(tmp_path) as dev:
        secret = banner_key(dev, 0)
        assert secret.startswith("llmc-")
        first = own_key(dev, secret)
        assert first["name"] == "make dev banner"
        saved = tmp_path / "store" / "dev-api-key.json"
        assert json.loads(saved.read_text())["secret"] == secret
    assert dev.stop() == 0
    start = log_lines(tmp_path)
    with DevProcess(tmp_path, port=dev.port) as again:
        assert banner_key(again, start) == secret
        assert own_key(again, secret)["id"] == first["id"]

"""`make dev` from a developer's shell (issue 15): the store survives a restart, the ops
CLI finds the running stack with no flags, a busy port is one line."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from tests.e2e.dev_process import DevProcess


def grant(dev: DevProcess, user: str, amount: str, key: str) -> dict[str, str]:
    admin = dev.run("token", "--sub", "ops", "--admin").stdout.strip()
    request = urllib.request.Request(  # noqa: S310 - loopback http
        f"{dev.api}/admin/users/{user}/credits", method="POST",
        data=json.dumps({"amount": amount, "type": "bonus", "reason": "welcome"}).encode(),
        headers={"Authorization": f"Bearer {admin}", "Content-Type": "application/json",
                 "Idempotency-Key": key},
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
        return dict(json.loads(response.read()))


def test_balance_survives_a_restart_and_admin_show_needs_no_flags(tmp_path: Path) -> None:
    with DevProcess(tmp_path) as dev:
        assert grant(dev, "alice", "10", "welcome-alice")["balance"] == "10.000000"
        shown = dev.run("admin", "show", "alice", "--json")
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["balance"] == "10.000000"
        # the CLI's writes land in the same store (and are kept)
        granted = dev.run("admin", "grant", "alice", "2.5", "--type", "bonus", "--reason",
                          "cli", "--yes", "--json")
        assert granted.returncode == 0, granted.stderr
    assert dev.stop() == 0
    assert not dev.stack_file.exists()  # a stopped stack is not "running" for the CLI
    gone = dev.run("admin", "show", "alice")
    assert gone.returncode == 2 and "make dev" in gone.stderr

    with DevProcess(tmp_path, port=dev.port) as again:
        shown = again.run("admin", "show", "alice", "--json")
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["balance"] == "12.500000"
        history = again.run("admin", "history", "alice")
        assert history.returncode == 0 and "reason='cli'" in history.stdout
        # the API idempotency record survived too: the retry is a replay
        assert grant(again, "alice", "10", "welcome-alice")["balance"] == "10.000000"
        assert json.loads(again.run("admin", "show", "alice", "--json").stdout)[
            "balance"] == "12.500000"

        # a second dev on the same (busy) port: one clear line, exit 1
        other = DevProcess(tmp_path / "other", port=again.port)
        (tmp_path / "other").mkdir()
        busy = other.run("dev")
        assert busy.returncode == 1
        lines = busy.stderr.strip().splitlines()
        assert lines[-1].startswith(f"llmcredits dev: port {again.port} on 127.0.0.1 is in use")
        assert "Traceback" not in busy.stderr


def test_keys_create_needs_no_flags_and_its_key_calls_the_running_stack(tmp_path: Path) -> None:
    with DevProcess(tmp_path) as dev:
        grant(dev, "kim", "5", "welcome-kim")
        created = dev.run("keys", "create", "--sub", "kim", "--limit", "1")
        assert created.returncode == 0, created.stderr
        secret = created.stdout.strip()
        assert secret.startswith("llmc-") and secret not in created.stderr
        request = urllib.request.Request(  # noqa: S310 - loopback http
            f"{dev.api}/key", headers={"Authorization": f"Bearer {secret}"})
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
            assert json.loads(response.read())["data"]["limit"] == "1.000000"

"""``llmcredits dev`` as a developer runs it: a subprocess on a free port, with its own
store folder and stack file, stopped with Ctrl-C (SIGINT)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.support import ROOT


def llmcredits_bin() -> list[str]:
    beside = Path(sys.executable).parent / "llmcredits"  # the venv running pytest
    if beside.exists():
        return [str(beside)]
    return [sys.executable, "-m", "llmcredits.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def developer_env(folder: Path, port: int) -> dict[str, str]:
    """A developer's shell: no AWS credentials, table or endpoint configured."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "POWERTOOLS_", "LLMCREDITS_"))
           and k not in ("TABLE_NAME", "DYNAMODB_ENDPOINT", "KMS_ENDPOINT")}
    env.update({
        "PORT": str(port),
        "LLMCREDITS_DEV_STORE": str(folder / "store"),
        "LLMCREDITS_STACK_FILE": str(folder / "stack.json"),
        "USER": "dev-test",
    })
    return env


class DevProcess:
    """Start ``llmcredits dev``; ``with`` waits until it listens and stops it after."""

    def __init__(self, folder: Path, port: int | None = None, timeout: float = 90) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.env = developer_env(folder, self.port)
        self.stack_file = folder / "stack.json"
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.api = f"{self.base_url}/api/v1/llm"
        self.timeout = timeout
        self.proc: subprocess.Popen[str] | None = None
        self.stderr = ""

    def __enter__(self) -> DevProcess:
        self.stack_file.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [*llmcredits_bin(), "dev"], cwd=ROOT, env=self.env, text=True,
            stdout=subprocess.DEVNULL, stderr=(self.folder / "dev.log").open("a"),
        )
        deadline = time.monotonic() + self.timeout
        while not self.stack_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"llmcredits dev exited {self.proc.returncode}: "
                                   f"{(self.folder / 'dev.log').read_text()[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("llmcredits dev did not start in time")
            time.sleep(0.2)
        return self

    def info(self) -> dict[str, Any]:
        return dict(json.loads(self.stack_file.read_text()))

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def __exit__(self, *exc: tuple[type[BaseException], BaseException, TracebackType]) -> None:
        self.stop()

    def run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """A command in the developer's shell (``llmcredits ...``)."""
        return subprocess.run(
            [*llmcredits_bin(), *argv], cwd=ROOT, env=self.env, capture_output=True,
            text=True, timeout=timeout, check=False,
        )

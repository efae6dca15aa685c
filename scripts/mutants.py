#!/usr/bin/env python3
"""Curated mutation check of the money and security code (`make mutants`, issue 16).

Each mutant in tests/mutants/mutants.toml is one realistic bug: an exact ``old`` snippet
of one file replaced by ``new``. For each, on a scratch copy of the working tree (the
files ``git ls-files`` knows, committed or not), this applies the mutant, runs the tests
named for it and, if none fails, the whole unit suite (moto only). A mutant must be
killed. The run fails (exit 1) when one survives, when its ``old`` snippet no longer
matches exactly once (re-anchor it after a refactor), or when its tests cannot run.

Before any mutant, the named tests run on the unmutated copy: they must pass, or a
"kill" would mean nothing. Every pytest run imports ``llmcredits`` from the scratch
copy's layers/shared (checked in the child before pytest starts), never from the
editable install of the real worktree.

    python scripts/mutants.py                  # every mutant
    python scripts/mutants.py --only reserve-funds-guard --keep
    python scripts/mutants.py --anchors        # after a merge: which mutants to re-anchor
    python scripts/mutants.py -j 2             # two mutants at a time, two copies
    python scripts/mutants.py --deselect tests/unit/test_money_guards.py::test_x
        # self-check: with a guard's test removed, its mutant must survive (exit 1)
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from textwrap import indent

ROOT = Path(__file__).resolve().parent.parent
CATALOG = Path("tests/mutants/mutants.toml")
UNIT_SUITE = ("tests/unit",)
# A mutant's named tests run in seconds: one that hangs them (a retry loop that never
# converges) counts as killed. The whole unit suite takes minutes on a loaded machine;
# its timeout is only a backstop and does NOT count as a kill.
NAMED_TIMEOUT_SECONDS = 300
SUITE_TIMEOUT_SECONDS = 3600

# Runs in the child, cwd = the scratch copy: import llmcredits from the copy or refuse.
BOOT = """\
import os, sys
root = os.path.realpath(os.getcwd())
sys.path.insert(0, os.path.join(root, "layers", "shared"))
import llmcredits
where = os.path.realpath(llmcredits.__file__)
if not where.startswith(root + os.sep):
    print(f"mutants: llmcredits imported from {where}, not from the copy {root}",
          file=sys.stderr)
    sys.exit(3)  # not 1: that would read as "a test failed, mutant killed"
import pytest
sys.exit(pytest.main(sys.argv[1:]))
"""

FAILED_LINE = re.compile(r"^(?:FAILED|ERROR) (\S+?)(?: - .*)?$", re.MULTILINE)


@dataclass(frozen=True)
class Mutant:
    id: str
    description: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


@dataclass
class Outcome:
    mutant: Mutant
    status: str  # killed, survived, anchor, broken, timeout
    killed_by: str = ""
    seconds: float = 0.0
    detail: str = ""
    fallback: bool = False  # the named tests missed it; the unit suite caught it
    output: str = ""  # the end of the last pytest run's output

    @property
    def ok(self) -> bool:
        return self.status in ("killed", "timeout")


@dataclass
class Run:
    returncode: int
    output: str
    seconds: float
    timed_out: bool = False
    timeout: float = 0
    failed: list[str] = field(default_factory=list)


def load_catalog(path: Path) -> list[Mutant]:
    data = tomllib.loads(path.read_text())
    mutants = []
    seen: set[str] = set()
    for raw in data.get("mutant", []):
        missing = {"id", "description", "file", "old", "new", "tests"} - set(raw)
        if missing:
            raise SystemExit(f"mutants: an entry of {path} lacks {sorted(missing)}: {raw}")
        if raw["id"] in seen:
            raise SystemExit(f"mutants: duplicate id {raw['id']!r} in {path}")
        if raw["old"] == raw["new"]:
            raise SystemExit(f"mutants: {raw['id']}: old and new are the same")
        seen.add(raw["id"])
        mutants.append(Mutant(raw["id"], raw["description"], raw["file"], raw["old"],
                              raw["new"], tuple(raw["tests"])))
    return mutants


def tracked_files(repo: Path) -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo, check=True, capture_output=True,
    ).stdout
    return sorted({name for name in out.decode().split("\0") if name})


def make_copy(repo: Path, scratch: Path) -> None:
    for name in tracked_files(repo):
        source = repo / name
        if not source.is_file():  # deleted in the working tree, or a submodule
            continue
        target = scratch / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def run_pytest(scratch: Path, targets: list[str], deselect: list[str],
               timeout: float = NAMED_TIMEOUT_SECONDS) -> Run:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONPATH": str(scratch / "layers" / "shared")}
    env.pop("PYTEST_ADDOPTS", None)
    args = [sys.executable, "-c", BOOT, "-q", "-x", "-p", "no:cacheprovider",
            "-m", "not dynamodb_local", "-rfE", "--no-header", *targets]
    for node in deselect:
        args += ["--deselect", node]
    started = time.monotonic()
    try:
        proc = subprocess.run(args, cwd=scratch, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return Run(-1, out, time.monotonic() - started, timed_out=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    return Run(proc.returncode, output, time.monotonic() - started,
               failed=FAILED_LINE.findall(output))


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def check_anchor(repo: Path, mutant: Mutant) -> str | None:
    """Why the mutant cannot be applied, or None."""
    path = repo / mutant.file
    if not path.is_file():
        return f"{mutant.file} does not exist"
    count = path.read_text().count(mutant.old)
    if count != 1:
        return (f"its `old` snippet matches {count} times in {mutant.file} (needs exactly 1):"
                " re-anchor this mutant on the current code")
    return None


def run_mutant(repo: Path, scratch: Path, mutant: Mutant, deselect: list[str],
               fallback: bool) -> Outcome:
    started = time.monotonic()
    original = (repo / mutant.file).read_text()
    target = scratch / mutant.file
    target.write_text(original.replace(mutant.old, mutant.new, 1))
    try:
        run = run_pytest(scratch, list(mutant.tests), deselect)
        outcome = classify(mutant, run)
        if outcome.status == "survived" and fallback:
            suite = run_pytest(scratch, list(UNIT_SUITE), deselect, SUITE_TIMEOUT_SECONDS)
            outcome = classify(mutant, suite)
            if outcome.status == "timeout":
                outcome.status, outcome.detail = "survived", "the unit suite timed out"
            outcome.fallback = outcome.ok
    finally:
        target.write_text(original)
    outcome.seconds = time.monotonic() - started
    return outcome


def classify(mutant: Mutant, run: Run) -> Outcome:
    outcome = _classify(mutant, run)
    outcome.output = tail(run.output, 25)
    return outcome


def _classify(mutant: Mutant, run: Run) -> Outcome:
    if run.timed_out:
        return Outcome(mutant, "timeout", killed_by=f"timeout after {run.timeout:.0f}s")
    if run.returncode in (0, 5):  # 5: every named test deselected, none ran
        return Outcome(mutant, "survived", detail=tail(run.output, 3))
    if run.returncode == 1:
        return Outcome(mutant, "killed", killed_by=run.failed[0] if run.failed else "?")
    # 2: collection error or interrupted, 3: imported the wrong llmcredits,
    # 4: a named test does not exist.
    return Outcome(mutant, "broken", detail=f"pytest exit {run.returncode}:\n"
                   + tail(run.output))


def print_table(outcomes: list[Outcome]) -> None:
    rows = [("id", "description", "result", "killed by", "s")]
    for o in outcomes:
        result = o.status + (" (unit suite)" if o.fallback else "")
        by = o.killed_by.removeprefix("tests/unit/")
        rows.append((o.mutant.id, o.mutant.description, result, by, f"{o.seconds:.1f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    widths[1] = min(widths[1], 60)
    for n, row in enumerate(rows):
        cells = [cell if i != 1 or len(cell) <= 60 else cell[:57] + "..."
                 for i, cell in enumerate(row)]
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=ROOT, help="the worktree to copy")
    parser.add_argument("--catalog", type=Path, default=None,
                        help=f"the mutant list (default: <repo>/{CATALOG})")
    parser.add_argument("--only", action="append", default=[], metavar="ID",
                        help="run only this mutant (repeatable)")
    parser.add_argument("--deselect", action="append", default=[], metavar="NODEID",
                        help="leave this test out of every run (to check a mutant then "
                             "survives)")
    parser.add_argument("--no-fallback", action="store_true",
                        help="do not run the unit suite when the named tests miss a mutant")
    parser.add_argument("--list", action="store_true", help="print the mutants and exit")
    parser.add_argument("--anchors", action="store_true",
                        help="only check that every mutant's `old` snippet still matches")
    parser.add_argument("-j", "--jobs", type=int, default=int(os.environ.get("MUTANTS_JOBS", 1)),
                        help="mutants run in parallel, each on its own copy (default 1, "
                             "or $MUTANTS_JOBS)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copy")
    parser.add_argument("--show", action="store_true",
                        help="print the end of each mutant's pytest output (why it died)")
    args = parser.parse_args(argv)

    repo = args.repo.resolve()
    mutants = load_catalog(args.catalog or repo / CATALOG)
    if args.only:
        unknown = set(args.only) - {m.id for m in mutants}
        if unknown:
            parser.error(f"unknown mutant id(s): {', '.join(sorted(unknown))}")
        mutants = [m for m in mutants if m.id in args.only]
    if args.list:
        for m in mutants:
            print(f"{m.id}: {m.description}\n    {m.file}\n    tests: {', '.join(m.tests)}")
        return 0

    started = time.monotonic()
    outcomes: list[Outcome] = []
    runnable: list[Mutant] = []
    for mutant in mutants:
        problem = check_anchor(repo, mutant)
        if problem:
            outcomes.append(Outcome(mutant, "anchor", detail=problem))
        else:
            runnable.append(mutant)

    if args.anchors:
        for o in outcomes:
            print(f"STALE {o.mutant.id}: {o.detail}")
        print(f"{len(runnable)}/{len(mutants)} anchors match")
        return 1 if outcomes else 0

    # One scratch copy per worker; a worker applies one mutant at a time to its copy.
    jobs = max(1, min(args.jobs, len(runnable) or 1))
    copies: queue.Queue[Path] = queue.Queue()
    made: list[Path] = []
    try:
        for _ in range(jobs):
            scratch = Path(tempfile.mkdtemp(prefix="llmcredits-mutants-"))
            made.append(scratch)
            make_copy(repo, scratch)
            copies.put(scratch)
        named = sorted({t for m in runnable for t in m.tests})
        if named:
            baseline = run_pytest(made[0], named, args.deselect)
            print(f"baseline: {len(named)} named tests on the unmutated copy: "
                  f"{'pass' if baseline.returncode in (0, 5) else 'FAIL'} "
                  f"({baseline.seconds:.1f}s)", flush=True)
            if baseline.returncode not in (0, 5):
                print(tail(baseline.output, 30), file=sys.stderr)
                print("mutants: the named tests must pass on the unmutated code first",
                      file=sys.stderr)
                return 1

        def one(mutant: Mutant) -> Outcome:
            scratch = copies.get()
            try:
                return run_mutant(repo, scratch, mutant, args.deselect,
                                  fallback=not args.no_fallback)
            finally:
                copies.put(scratch)

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            for outcome in pool.map(one, runnable):
                print(f"  {outcome.mutant.id}: {outcome.status} ({outcome.seconds:.1f}s)",
                      flush=True)
                if args.show:
                    print(indent(outcome.output, "      | "), flush=True)
                outcomes.append(outcome)
    finally:
        for scratch in made:
            if args.keep:
                print(f"scratch copy kept at {scratch}")
            else:
                shutil.rmtree(scratch, ignore_errors=True)

    order = {m.id: i for i, m in enumerate(mutants)}
    outcomes.sort(key=lambda o: order[o.mutant.id])
    print()
    print_table(outcomes)
    bad = [o for o in outcomes if not o.ok]
    weak = [o for o in outcomes if o.fallback]
    killed = sum(o.ok for o in outcomes)
    print(f"\n{killed}/{len(outcomes)} mutants killed in {time.monotonic() - started:.0f}s")
    for o in weak:
        print(f"note: {o.mutant.id}: its named tests missed it; the unit suite caught it "
              f"({o.killed_by}): name that test in the catalog")
    for o in bad:
        print(f"FAIL {o.mutant.id} ({o.mutant.file}): {o.status}: {o.detail}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

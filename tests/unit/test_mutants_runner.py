"""The mutation runner (scripts/mutants.py) on a tiny repository of its own: a mutant is
killed by its named test, caught by the unit suite when the named test is weak, and
SURVIVES (exit 1) when the test that guards it is removed; a stale anchor fails the run
naming the mutant; and the copy's own ``llmcredits`` is what the tests import."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.support import ROOT

FEE = '''\
def fee(amount):
    return amount * 2 if amount >= 10 else amount
'''

TESTS = '''\
from llmcredits.calc import fee


def test_big_amounts_double():
    assert fee(10) == 20


def test_small_amounts_stay():
    assert fee(3) == 3
'''

BIG = "tests/unit/test_calc.py::test_big_amounts_double"
SMALL = "tests/unit/test_calc.py::test_small_amounts_stay"


def catalog(tests: list[str], old: str = "amount >= 10") -> str:
    names = ", ".join(f'"{t}"' for t in tests)
    return f'''
[[mutant]]
id = "fee-off-by-one"
description = "doubling starts above 10"
file = "layers/shared/llmcredits/calc.py"
old = \'\'\'{old}\'\'\'
new = \'\'\'amount > 10\'\'\'
tests = [{names}]
'''


@pytest.fixture(scope="module")
def runner() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mutants_runner", ROOT / "scripts" / "mutants.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def make_repo(path: Path, tests: list[str], *, old: str = "amount >= 10",
              package: bool = True) -> Path:
    files = {"tests/unit/test_calc.py": TESTS, "tests/mutants/mutants.toml": catalog(tests, old)}
    if package:
        files["layers/shared/llmcredits/__init__.py"] = ""
        files["layers/shared/llmcredits/calc.py"] = FEE
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    return path


def test_a_mutant_is_killed_by_its_named_test(runner, tmp_path, capsys):
    repo = make_repo(tmp_path, [BIG])
    assert runner.main(["--repo", str(repo)]) == 0
    out = capsys.readouterr().out
    assert "1/1 mutants killed" in out and "test_calc.py::test_big_amounts_double" in out
    assert (repo / "layers/shared/llmcredits/calc.py").read_text() == FEE  # untouched


def test_a_weak_test_list_falls_back_to_the_unit_suite(runner, tmp_path, capsys):
    repo = make_repo(tmp_path, [SMALL])
    assert runner.main(["--repo", str(repo)]) == 0
    out = capsys.readouterr().out
    assert "killed (unit suite)" in out and "name that test in the catalog" in out


def test_without_the_guarding_test_the_mutant_survives_and_the_run_fails(
    runner, tmp_path, capsys
):
    repo = make_repo(tmp_path, [BIG])
    assert runner.main(["--repo", str(repo), "--deselect", BIG]) == 1
    captured = capsys.readouterr()
    assert "0/1 mutants killed" in captured.out
    assert "FAIL fee-off-by-one" in captured.err and "survived" in captured.err


def test_a_stale_anchor_fails_the_run_naming_the_mutant(runner, tmp_path, capsys):
    repo = make_repo(tmp_path, [BIG], old="amount >= 100")
    assert runner.main(["--repo", str(repo)]) == 1
    err = capsys.readouterr().err
    assert "FAIL fee-off-by-one" in err and "re-anchor" in err


def test_the_tests_must_import_llmcredits_from_the_copy(runner, tmp_path, capsys):
    # No llmcredits in the copy: the editable install's would be imported. Refused.
    repo = make_repo(tmp_path, [BIG], old="", package=False)
    (repo / "tests/mutants/mutants.toml").write_text(
        catalog([BIG]).replace("layers/shared/llmcredits/calc.py", "tests/unit/test_calc.py")
        .replace("amount >= 10", "fee(10) == 20").replace("amount > 10", "fee(10) == 21"))
    assert runner.main(["--repo", str(repo)]) == 1
    captured = capsys.readouterr()
    assert "not from the copy" in captured.out + captured.err

"""checkov on template.yaml: 0 failed checks, and every skip carries its reason.

    python scripts/checkov_template.py [--checkov PATH] [--template template.yaml]

Runs checkov (its own venv, see `make checkov`: it pins boto3/botocore versions that
conflict with the dev venv) and prints each failed check on one line (check id,
resource, template line, what it wants) so a new resource's findings can be fixed or
given an inline reason (``Metadata: checkov: skip: [{id, comment}]`` on the resource).
Exit 1 on any failed check or any skip without a comment.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run_checkov(checkov: str, template: Path) -> dict[str, Any]:
    result = subprocess.run(
        [checkov, "-f", str(template), "--framework", "cloudformation", "--output", "json",
         "--compact", "--skip-download"],
        capture_output=True, text=True, check=False,
    )
    if result.returncode not in (0, 1) or not result.stdout.strip():
        raise SystemExit(f"checkov failed to run (exit {result.returncode}):\n"
                         f"{result.stderr[-3000:]}")
    report = json.loads(result.stdout)
    if isinstance(report, list):  # one entry per framework
        report = next((r for r in report if r.get("check_type") == "cloudformation"),
                      report[0])
    if "results" not in report:  # nothing to check: checkov prints only a summary
        report = {"results": {"failed_checks": [], "passed_checks": [], "skipped_checks": []},
                  "summary": report}
    return dict(report)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkov", default=str(ROOT / ".cache" / "checkov" / "bin" / "checkov"))
    parser.add_argument("--template", type=Path, default=ROOT / "template.yaml")
    args = parser.parse_args(argv)

    report = run_checkov(args.checkov, args.template)
    results = report["results"]
    failed = results.get("failed_checks", [])
    skipped = results.get("skipped_checks", [])
    unexplained = [s for s in skipped if not str(s.get("check_result", {}).get(
        "suppress_comment") or "").strip()]
    for check in failed:
        lines = check.get("file_line_range") or ["?"]
        print(f"FAILED {check['check_id']} {check['resource']} (template.yaml:{lines[0]}): "
              f"{check['check_name']}")
    for check in unexplained:
        print(f"SKIPPED WITHOUT A REASON {check['check_id']} {check['resource']}")
    print(f"checkov {report.get('summary', {}).get('checkov_version', '?')} on "
          f"{args.template.name}: {len(results.get('passed_checks', []))} passed, "
          f"{len(failed)} failed, {len(skipped) - len(unexplained)} skipped with a reason"
          f"{f', {len(unexplained)} without' if unexplained else ''}")
    if failed:
        print("Fix each, or skip it on its resource with a one-line reason:\n"
              "    Metadata:\n      checkov:\n        skip:\n"
              "          - id: CKV_AWS_...\n            comment: \"why\"")
    return 1 if failed or unexplained else 0


if __name__ == "__main__":
    sys.exit(main())

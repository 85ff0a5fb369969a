"""Compare runs of Kiln's shipped tests (JUnit XML): the same tests ran, and the same ones passed.

``python tests_kiln/compare_runs.py stock.xml instrumentor.xml explicit.xml``: the first file is the
stock run; each other one must have collected the same tests and passed exactly the same ones. Prints
every count and exits 1 on any difference, or when nothing passed at all.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def outcomes(path: Path) -> dict[str, str]:
    """Test id -> passed / failed / error / skipped."""
    results: dict[str, str] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        test_id = f"{case.get('classname')}::{case.get('name')}"
        if test_id in results:
            raise SystemExit(f"{path}: test id {test_id} twice: the ids do not name tests uniquely")
        kinds = {child.tag for child in case} & {"failure", "error", "skipped"}
        results[test_id] = next(iter(sorted(kinds)), "passed")
    return results


def passed(results: dict[str, str]) -> set[str]:
    return {name for name, outcome in results.items() if outcome == "passed"}


def main(stock_path: str, *other_paths: str) -> int:
    stock = outcomes(Path(stock_path))
    problems = [] if passed(stock) else ["no test passed stock: the selection ran nothing"]
    counts = [f"{Path(stock_path).stem} {len(passed(stock))} passed of {len(stock)}"]
    for path in other_paths:
        name, run = Path(path).stem, outcomes(Path(path))
        counts.append(f"{name} {len(passed(run))} passed of {len(run)}")
        if set(run) != set(stock):
            problems.append(f"{name}: not the same tests: {sorted(set(run) ^ set(stock))[:20]}")
        new_failures = sorted(passed(stock) - passed(run))
        if new_failures:
            problems.append(f"{name}: {len(new_failures)} new failure(s): {new_failures[:20]}")
        if passed(run) - passed(stock):
            problems.append(f"{name}: passed only here (flaky?): {sorted(passed(run) - passed(stock))[:20]}")
    print(f"[kiln-tests] Kiln's shipped tests: {'; '.join(counts)}")
    for problem in problems:
        print(f"[kiln-tests] FAIL: {problem}")
    if not problems:
        print(f"[kiln-tests] 0 new failures: the same {len(passed(stock))} tests pass on every route")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))

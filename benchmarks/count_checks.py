"""Count the checks the test suite makes, for issue 30's "no check may disappear": `assert` statements,
`pytest.raises` calls and `assert_*` helper calls (numpy's / torch's testing asserts) in tests/*.py, by parsing
the sources, so a check counts once wherever it sits (a loop or a parametrized test counts once too).

    .venv/bin/python benchmarks/count_checks.py [tests]

The number of collected tests comes from pytest itself: `.venv/bin/python -m pytest --collect-only -q | tail -1`.
"""
import ast
import sys
from pathlib import Path


def count(folder: Path) -> dict[str, int]:
    totals = {"files": 0, "assert": 0, "pytest.raises": 0, "assert_* calls": 0}
    for path in sorted(folder.glob("*.py")):
        totals["files"] += 1
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Assert):
                totals["assert"] += 1
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr == "raises" and isinstance(node.func.value, ast.Name) \
                        and node.func.value.id == "pytest":
                    totals["pytest.raises"] += 1
                elif node.func.attr.startswith("assert_"):
                    totals["assert_* calls"] += 1
    return totals


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "tests")
    for key, value in count(folder).items():
        print(f"{key:>15}: {value}")

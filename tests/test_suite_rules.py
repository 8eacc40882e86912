"""Rules the suite keeps about itself, checked on its own source."""
from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
#: the only places that may call pytest.skip: the missing-tool rule itself, the double-only fixture
#: (a real cluster cannot inject faults), and the one test that needs a machine *without* CUDA
ALLOWED_SKIPS = {"fixtures/tools.py", "fixtures/es.py", "test_backbone.py"}


def _skip_calls(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "skip"
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "pytest"]


def test_service_dependent_skips_go_through_the_missing_tool_rule():
    offenders = {str(path.relative_to(TESTS)): lines for path in sorted(TESTS.rglob("*.py"))
                 if str(path.relative_to(TESTS)) not in ALLOWED_SKIPS and (lines := _skip_calls(path))}
    assert not offenders, (f"pytest.skip outside the missing-tool rule (tests/fixtures/tools.py missing_tool, "
                           f"which fails under CI=true): {offenders}")


def test_the_random_seed_is_printed_under_quiet(pytester):
    hook = (TESTS / "conftest.py").read_text(encoding="utf-8")
    pytester.makeconftest(hook[hook.index("def pytest_terminal_summary"):])
    pytester.makepyfile("def test_one():\n    assert True\n")
    result = pytester.runpytest_subprocess("-q", "-p", "randomly", "--randomly-seed=4242")
    assert "pytest -p randomly --randomly-seed=4242" in result.stdout.str()

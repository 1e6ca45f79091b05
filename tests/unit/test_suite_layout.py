"""The suite's own layout: pytest imports test modules by their base name (rootdir
mode), so two test files of one name in different directories stop the whole run at
collection (it happened twice: tests/unit and tests/e2e both had test_metering.py, then
test_multi_node.py)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_every_test_module_name_is_unique() -> None:
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert [name for name, count in names.items() if count > 1] == []

"""The order xdist hands out work in: each unit (a group sharing a costly fixture) whole, most `slow` tests first."""

from types import SimpleNamespace
from typing import Any

import pytest

from tests.conftest import heaviest_first, shared_fixture_groups


def _item(name: str, *, slow: bool) -> Any:
    marker = pytest.mark.slow.mark if slow else None
    return SimpleNamespace(nodeid=name, get_closest_marker=lambda wanted: marker if wanted == "slow" else None)


def test_units_stay_whole_and_the_ones_with_most_slow_tests_go_first() -> None:
    fast_a, slow_b, fast_c = _item("a", slow=False), _item("b", slow=True), _item("c", slow=False)
    report_1, report_2, report_3 = (_item(f"report{i}", slow=True) for i in (1, 2, 3))
    stack_1, stack_fast = _item("stack1", slow=True), _item("stack-fast", slow=False)
    slow_d = _item("d", slow=True)
    items = [fast_a, report_1, slow_b, stack_1, report_2, fast_c, stack_fast, report_3, slow_d]
    groups = [None, "report", None, "stack", "report", None, "stack", "report", None]

    ordered = heaviest_first(items, groups)

    # report: 3 slow; stack: 1 slow, as many as b and d (collection order among them); then the fast tests.
    assert ordered == [report_1, report_2, report_3, slow_b, stack_1, stack_fast, slow_d, fast_a, fast_c]


def test_the_suite_s_own_order_keeps_each_group_together(request: pytest.FixtureRequest) -> None:
    items = list(request.session.items)
    groups = shared_fixture_groups(items)
    group_of = {item.nodeid: group or item.nodeid for item, group in zip(items, groups, strict=True)}
    ordered = heaviest_first(items, groups)

    assert sorted(item.nodeid for item in ordered) == sorted(item.nodeid for item in items)
    units = [group_of[item.nodeid] for item in ordered]
    runs = [unit for index, unit in enumerate(units) if index == 0 or units[index - 1] != unit]
    assert len(runs) == len(set(units))  # no unit is split
    slow_counts = [
        sum(item.get_closest_marker("slow") is not None for item in ordered if group_of[item.nodeid] == unit)
        for unit in runs
    ]
    assert slow_counts == sorted(slow_counts, reverse=True)


def test_the_autouse_session_fixtures_tie_no_tests_together(request: pytest.FixtureRequest) -> None:
    # This test uses only `request` and the suite's autouse fixtures: made on each worker, they group nothing.
    assert shared_fixture_groups([request.node]) == [None]

"""docs/instrumenting.md and docs/testing.md: every example runs and prints what the page says."""

from __future__ import annotations

import doctest

import pytest
from support.docs import ROOT


@pytest.mark.parametrize("page", ["instrumenting.md", "testing.md"])
def test_the_examples_of_the_page_run_as_shown(page: str) -> None:
    result = doctest.testfile(str(ROOT / "docs" / page), module_relative=False,
                              optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 5
    assert result.failed == 0

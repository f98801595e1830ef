"""Fixtures shared by several test modules."""
import pytest


@pytest.fixture
def quick_shrinking(monkeypatch):
    """nldsl.checking shrinks a failing case for at most 0.5 s (3 s by default): the planted
    failures of tests/test_checking_*.py are found at once, and their shrinking is not tested."""
    from nldsl.checking import report

    monkeypatch.setattr(report, "SHRINK_SECONDS", 0.5)

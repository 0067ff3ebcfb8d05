"""The benchmark's own logic that could mislead: reading the app's chart timeline."""

from __future__ import annotations

import pytest

from benchmarks.app_interactive import _timings


def test_app_timings_wait_for_the_new_curve_not_the_old_one():
    clicked = 1000.0
    log = [
        (900.0, [["vanilla", 5], ["permuted", 5]]),  # before the click
        (1010.0, [["vanilla", 5], ["permuted", 5]]),  # the old chart, still complete after the click
        (1400.0, [["vanilla", 5]]),  # the new run's first draw: the old chart is gone
        (1900.0, [["vanilla", 5], ["permuted (computing…)", 1]]),
        (2600.0, [["vanilla", 5], ["permuted (computing…)", 3]]),
        (3250.0, [["vanilla", 5], ["permuted", 5]]),
    ]
    assert _timings(log, clicked, lambdas=5) == pytest.approx({"first_point": 0.9, "full_curve": 2.25})


def test_app_timings_are_none_when_the_new_curve_never_shows():
    log = [(1010.0, [["vanilla", 5], ["permuted", 5]])]
    assert _timings(log, 1000.0, lambdas=5) == {"first_point": None, "full_curve": None}

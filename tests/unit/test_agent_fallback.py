"""The agent's own forecast from daily windows (`fallback.py`): which days count, their moments, the step length."""

import math

import numpy as np
import pytest

from shelfcast_agent.decide import step_moments
from shelfcast_agent.fallback import DAY_MS, LOOKBACK_DAYS, daily_fallback

D0 = 1_767_225_600_000  # 2026-01-01


def days(*offsets: int) -> np.ndarray:
    return np.array([D0 + o * DAY_MS for o in offsets], dtype=np.int64)


def test_no_window_before_the_period_gives_no_fallback() -> None:
    assert daily_fallback(days(), np.array([]), D0, 1.0) is None
    assert daily_fallback(days(0, 1), np.array([5.0, 5.0]), D0, 1.0) is None  # both on or after the period
    old = days(-LOOKBACK_DAYS - 1)
    assert daily_fallback(old, np.array([9.0]), D0, 1.0) is None  # beyond the look-back


def test_days_without_a_window_count_as_zero_between_the_first_and_the_newest() -> None:
    found = daily_fallback(days(-10, -7), np.array([6.0, 2.0]), D0, 1.0)
    assert found is not None
    assert found.days == 4 and found.mean_per_day == pytest.approx(2.0)
    assert found.quantiles["p50"] == [pytest.approx(2.0)]
    daily = np.array([6.0, 0.0, 0.0, 2.0])
    sd = math.sqrt(max(float(daily.var(ddof=1)), 2.0))
    assert found.quantiles["p90"][0] == pytest.approx(2.0 + 1.2815516 * sd, rel=1e-6)
    assert found.quantiles["p10"] == [0.0]  # floored
    assert "from feature store daily windows" in found.describe(1.0)


def test_constant_demand_is_at_least_poisson_dispersed_and_scales_with_the_step() -> None:
    starts = days(*range(-14, 0))
    units = np.full(14, 10.0)
    daily = daily_fallback(starts, units, D0, 1.0)
    weekly = daily_fallback(starts, units, D0, 7.0)
    assert daily is not None and weekly is not None
    mean_d, var_d = step_moments(daily.quantiles)
    mean_w, var_w = step_moments(weekly.quantiles)
    assert mean_d[0] == pytest.approx(10.0, rel=0.02)  # Swanson's mean of the normal's quantiles
    assert var_d[0] == pytest.approx(10.0, rel=0.02)  # variance floored at the mean
    assert mean_w[0] == pytest.approx(70.0, rel=0.02) and var_w[0] == pytest.approx(70.0, rel=0.02)


def test_hostile_window_values_do_not_poison_the_forecast() -> None:
    found = daily_fallback(days(-3, -2, -1), np.array([np.nan, -5.0, 4.0]), D0, 1.0)
    assert found is not None
    assert all(math.isfinite(v) and v >= 0 for q in found.quantiles.values() for v in q)
    assert found.mean_per_day == pytest.approx(4.0 / 3)

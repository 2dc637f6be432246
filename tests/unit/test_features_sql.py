import os

import pytest
from pydantic import ValidationError

from shelfcast_features import sql
from shelfcast_features.settings import FeatureJobSettings, granularity_ms


def test_granularities_parse_to_milliseconds_and_sql_intervals() -> None:
    assert [granularity_ms(g) for g in ("30s", "1m", "5m", "1h", "1d")] == [
        30_000,
        60_000,
        300_000,
        3_600_000,
        86_400_000,
    ]
    assert sql.interval("5m") == "INTERVAL '5' MINUTE"
    assert sql.interval("1d") == "INTERVAL '1' DAY"


@pytest.mark.parametrize("bad", [["1w"], ["0m"], ["1m", "1m"], [], ["100h"]])
def test_bad_granularities_are_refused(bad: list[str]) -> None:
    with pytest.raises(ValidationError, match="granularit"):
        FeatureJobSettings(granularities=bad)


def test_every_granularity_gets_a_window_and_a_late_branch() -> None:
    job = FeatureJobSettings(granularities=["1m", "1h"], allowed_lateness_ms=30_000)
    windows, dead = sql.windows_query(job), sql.dead_letter_insert(job)
    assert windows.count("GROUP BY sku, TUMBLE(event_time") == 2
    assert "'1h' AS granularity" in windows
    # too late = the window's last millisecond plus the allowed lateness is at or behind the watermark
    assert "ts - MOD(ts, 3600000) + 3600000 - 1 + 30000" in dead
    assert dead.count("late: the") == 2


def test_the_local_jvm_gets_the_heap_cap_unless_jvm_args_set_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from shelfcast_features.job import bound_local_heap

    job = FeatureJobSettings(local_heap_mb=1024)
    monkeypatch.delenv("JVM_ARGS", raising=False)
    bound_local_heap(job)
    assert os.environ["JVM_ARGS"] == "-Xms1024m -Xmx1024m"
    monkeypatch.setenv("JVM_ARGS", "-XX:+UseG1GC")
    bound_local_heap(job)
    assert os.environ["JVM_ARGS"] == "-XX:+UseG1GC -Xms1024m -Xmx1024m"
    monkeypatch.setenv("JVM_ARGS", "-Xmx3g")
    bound_local_heap(job)
    assert os.environ["JVM_ARGS"] == "-Xmx3g"


def test_event_time_is_guarded_in_the_source_and_future_records_are_dead_lettered_not_windowed() -> None:
    job = FeatureJobSettings()
    source = sql.source_table("events", "127.0.0.1:9092", "g", job, max_clock_skew_s=300)
    # the watermark's column comes from EVENT_TIME with the skew in ms, never from the raw ts
    assert "rowtime AS TO_TIMESTAMP_LTZ(EVENT_TIME(`raw`, CAST(300000 AS BIGINT)), 3)" in source
    assert "JSON_VALUE" not in source
    parsed = sql.parsed(300)
    assert "r.rowtime <> TO_TIMESTAMP_LTZ(p.ts, 3)" in parsed
    assert "'future_ts: ts is more than 300 s" in parsed
    # windows read only error-free records; the dead-letter statement takes every record with an error
    assert "WHERE error IS NULL" in sql.FIRST_DELIVERIES
    assert "FROM parsed WHERE error IS NOT NULL" in sql.dead_letter_insert(job)

"""The SQL of the features job. Everything per event runs here, in Flink's Java runtime.

Why SQL and not the Python DataStream API: a Python function per event crosses into a Python worker
for every record (1-3k events/s measured here), while parsing, validation, dedupe and windowing in SQL
stay in the JVM (tens of thousands per second per core). Python sees one row per window update only.

Parsing and validation is one Java table function (`flink_jobs/java`, built by `make`): the built-in
JSON_VALUE re-parses the whole record on each call, and with one call per field that was most of the CPU.

Event time is guarded where the watermark is made, in the source: the Java scalar function EVENT_TIME
gives a record's `ts` only when the record is valid and `ts` is at most SHELFCAST_MAX_CLOCK_SKEW_S ahead
of the job's clock, else 0 (1970), which never moves a watermark. So one storefront with a wrong clock
cannot push event time a month ahead and make every on-time event late. A valid record whose event time
is not its `ts` is dead-lettered as `future_ts` and never reaches a window.

Pipeline (one statement set, so the source and the parse are shared):
    raw Kafka records --parse/validate--> invalid  -> dead-letter topic
                                       -> valid --dedupe event_id--> too late for a window -> dead-letter topic
                                                                  -> tumbling windows per SKU and granularity
The windows are legacy group windows (`GROUP BY TUMBLE`) because only they support allowed lateness
(`table.exec.emit.allow-lateness` with late firing): a late event within it re-emits its window.
"""

from shelfcast_features.settings import FeatureJobSettings, granularity_ms

_SQL_UNITS = {"s": "SECOND", "m": "MINUTE", "h": "HOUR", "d": "DAY"}


def interval(granularity: str) -> str:
    """'5m' -> INTERVAL '5' MINUTE."""
    return f"INTERVAL '{granularity[:-1]}' {_SQL_UNITS[granularity[-1]]}"


EVENT_TIME_FUNCTION = "CREATE TEMPORARY FUNCTION EVENT_TIME AS 'dev.shelfcast.flink.EventTime' LANGUAGE JAVA"


def source_table(topic: str, bootstrap: str, group_id: str, job: FeatureJobSettings, max_clock_skew_s: int) -> str:
    return f"""
CREATE TEMPORARY TABLE events_raw (
  `raw` STRING,
  `topic` STRING METADATA VIRTUAL,
  `partition` INT METADATA VIRTUAL,
  `offset` BIGINT METADATA VIRTUAL,
  rowtime AS TO_TIMESTAMP_LTZ(EVENT_TIME(`raw`, CAST({max_clock_skew_s * 1000} AS BIGINT)), 3),
  proc AS PROCTIME(),
  WATERMARK FOR rowtime AS rowtime - INTERVAL '{job.out_of_orderness_ms / 1000:.3f}' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = '{topic}',
  'properties.bootstrap.servers' = '{bootstrap}',
  'properties.group.id' = '{group_id}',
  'scan.startup.mode' = 'earliest-offset',
  'format' = 'raw'
)"""


def dead_letter_table(topic: str, bootstrap: str) -> str:
    return f"""
CREATE TEMPORARY TABLE dead_letters (
  schema_version INT, raw_b64 STRING, reason STRING, source_topic STRING, source_partition INT,
  source_offset BIGINT, stage STRING, failed_at BIGINT
) WITH (
  'connector' = 'kafka',
  'topic' = '{topic}',
  'properties.bootstrap.servers' = '{bootstrap}',
  'format' = 'json',
  'sink.delivery-guarantee' = 'at-least-once'
)"""


# Each record is parsed once, in the JVM, by the Java table function `ParseEvent` (flink_jobs/java):
# the fields, and in `error` the first broken field and why, or NULL.
PARSE_FUNCTION = "CREATE TEMPORARY FUNCTION PARSE_EVENT AS 'dev.shelfcast.flink.ParseEvent' LANGUAGE JAVA"


def parsed(max_clock_skew_s: int) -> str:
    """Every record, parsed; a valid one whose event time is not its `ts` (EVENT_TIME found it too far
    ahead) gets the error `future_ts`, so it is dead-lettered and never windowed."""
    return f"""
SELECT r.`raw`, r.`topic`, r.`partition`, r.`offset`, r.rowtime,
  p.event_id, p.event_type, p.sku, p.ts, p.qty, p.price, p.currency,
  CASE WHEN p.error IS NULL AND r.rowtime <> TO_TIMESTAMP_LTZ(p.ts, 3)
    THEN 'future_ts: ts is more than {max_clock_skew_s} s (SHELFCAST_MAX_CLOCK_SKEW_S) ahead of the job''s clock'
    ELSE p.error END AS error
FROM events_raw AS r, LATERAL TABLE(PARSE_EVENT(r.`raw`)) AS p"""


# First delivery of each event_id wins; duplicates are dropped (state kept for `table.exec.state.ttl`).
# Flink 2.0's planner takes this Rank for an updating stream although it only ever inserts (FLINK-37005,
# fixed in 2.1); the job hands it through a DataStream declared insert-only (see `job.as_insert_only`).
FIRST_DELIVERIES = """
SELECT `raw`, `topic`, `partition`, `offset`, ts, parsed_time, event_type, sku, qty, price FROM (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY event_id ORDER BY proc) AS first_seen
  FROM parsed WHERE error IS NULL
) WHERE first_seen = 1"""


def _too_late(granularity: str, job: FeatureJobSettings) -> str:
    """True when the event's window has closed for good (Flink's legacy window drops it then)."""
    size = granularity_ms(granularity)
    cleanup = f"ts - MOD(ts, {size}) + {size} - 1 + {job.allowed_lateness_ms}"
    return f"COALESCE(TO_TIMESTAMP_LTZ({cleanup}, 3) <= CURRENT_WATERMARK(event_time), FALSE)"


def dead_letter_insert(job: FeatureJobSettings) -> str:
    invalid = """
SELECT 1, TO_BASE64(`raw`), error, `topic`, `partition`, `offset`, 'features', UNIX_TIMESTAMP() * 1000
FROM parsed WHERE error IS NOT NULL"""
    late = [
        f"""
SELECT 1, TO_BASE64(`raw`), 'late: the {g} window of this event closed (watermark past its end + allowed lateness)',
  `topic`, `partition`, `offset`, 'features', UNIX_TIMESTAMP() * 1000
FROM deduped WHERE {_too_late(g, job)}"""
        for g in job.granularities
    ]
    return "INSERT INTO dead_letters" + "\nUNION ALL".join([invalid, *late])


def windows_query(job: FeatureJobSettings) -> str:
    """One row per window and update: the `FeatureWindow` contract's fields (ratios are computed in Python)."""
    parts = []
    for g in job.granularities:
        size = granularity_ms(g)
        parts.append(f"""
SELECT sku, '{g}' AS granularity,
  MIN(ts - MOD(ts, {size})) AS window_start,
  MIN(ts - MOD(ts, {size})) + {size} AS window_end,
  SUM(CASE WHEN event_type = 'view' THEN 1 ELSE 0 END) AS `views`,
  SUM(CASE WHEN event_type = 'click' THEN 1 ELSE 0 END) AS `clicks`,
  SUM(CASE WHEN event_type = 'cart' THEN 1 ELSE 0 END) AS `carts`,
  SUM(CASE WHEN event_type = 'purchase' THEN 1 ELSE 0 END) AS `purchases`,
  SUM(CASE WHEN event_type = 'return' THEN 1 ELSE 0 END) AS `returns`,
  SUM(CASE WHEN event_type = 'purchase' THEN qty ELSE 0 END) AS `units`,
  SUM(CASE WHEN event_type = 'return' THEN qty ELSE 0 END) AS `returned_units`,
  SUM(CASE WHEN event_type = 'purchase' THEN qty * price ELSE 0 END) AS `revenue`
FROM deduped
WHERE NOT {_too_late(g, job)}
GROUP BY sku, TUMBLE(event_time, {interval(g)})""")
    return "\nUNION ALL".join(parts)

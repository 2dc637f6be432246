"""Build and run the features job: on a local mini-cluster by default, or on a Flink cluster.

State (dedupe, open windows, Kafka offsets) is checkpointed into `{state_dir}/flink/checkpoints`; a
restarted job resumes from the newest retained checkpoint, so nothing is lost or counted twice.
"""

import os
import sys
from pathlib import Path

from pyflink.common import Configuration, RowKind, Types
from pyflink.datastream import StreamExecutionEnvironment
from pyflink.datastream.connectors.base import Sink
from pyflink.java_gateway import get_gateway
from pyflink.table import ChangelogMode, DataTypes, Schema, StreamTableEnvironment, Table

from shelfcast.errors import ShelfcastError
from shelfcast.settings import Settings
from shelfcast_features import sql
from shelfcast_features.settings import FeatureJobSettings
from shelfcast_features.writer import WindowWriter

# Kafka connector jars from PyPI `shigawire-apache-flink-libraries`, and our own (`make` builds it).
JARS = ("flink-connector-kafka.jar", "kafka-clients.jar", "shelfcast-flink-udf.jar")
JOB_NAME = "shelfcast-features"


def job_jars() -> list[Path]:
    """The jars the job loads, from `SHELFCAST_FLINK_JARS_DIR` (default: where `make venv` puts them)."""
    folder = Path(os.environ.get("SHELFCAST_FLINK_JARS_DIR", Path(sys.prefix) / "flink-libs" / "pyflink" / "lib"))
    jars = [folder / name for name in JARS]
    missing = [str(j) for j in jars if not j.is_file()]
    if missing:
        raise ShelfcastError(f"Flink jars missing: {', '.join(missing)} (run `make venv` to install and build them)")
    return jars


def latest_checkpoint(checkpoints: Path) -> Path | None:
    """The newest completed checkpoint (one with `_metadata`) of any earlier run, if there is one."""
    done = [m.parent for m in checkpoints.glob("*/chk-*/_metadata")]
    return max(done, key=lambda p: p.stat().st_mtime) if done else None


def _configuration(settings: Settings, job: FeatureJobSettings, jobmanager: str | None) -> Configuration:
    flink_dir = (settings.state_dir / "flink").resolve()
    config = Configuration()
    config.set_string("pipeline.jars", ";".join(j.as_uri() for j in job_jars()))
    config.set_string("pipeline.name", JOB_NAME)
    config.set_string("parallelism.default", str(job.parallelism))
    config.set_string("io.tmp.dirs", str(flink_dir / "tmp"))
    # Window updates reach the Python writer in bundles; the default (1 s) would be most of the latency.
    config.set_string("python.fn-execution.bundle.time", "100")
    config.set_string("execution.checkpointing.interval", f"{job.checkpoint_interval_ms} ms")
    checkpoints = job.checkpoint_dir or (flink_dir / "checkpoints").as_uri()
    config.set_string("execution.checkpointing.dir", checkpoints)
    config.set_string("execution.checkpointing.externalized-checkpoint-retention", "RETAIN_ON_CANCELLATION")
    config.set_string("execution.checkpointing.num-retained", "3")
    # On a cluster the Flink Kubernetes Operator restores the job itself (upgradeMode: last-state).
    restore = latest_checkpoint(flink_dir / "checkpoints") if job.checkpoint_dir is None else None
    if restore is not None:
        config.set_string("execution.state-recovery.path", restore.as_uri())
    if jobmanager is not None:
        host, _, port = jobmanager.rpartition(":")
        config.set_string("execution.target", "remote")
        config.set_string("rest.address", host)
        config.set_string("rest.port", port)
    return config


def _table_config(table_env: StreamTableEnvironment, job: FeatureJobSettings) -> None:
    config = table_env.get_config()
    config.set("table.exec.source.idle-timeout", f"{job.idle_timeout_ms} ms")
    config.set("table.exec.state.ttl", f"{job.dedupe_ttl_minutes} min")
    config.set("table.exec.emit.allow-lateness", f"{job.allowed_lateness_ms} ms")
    config.set("table.exec.emit.late-fire.enabled", "true")
    config.set("table.exec.emit.late-fire.delay", "0 s")


def as_insert_only(table_env: StreamTableEnvironment, table: Table, time_column: str, proctime: bool) -> Table:
    """The same rows through a DataStream (all in the JVM), declared insert-only, the event time and the
    source's watermarks carried across as `time_column`.

    Used twice: after parsing, so that the dead-letter statement and the windows share one Kafka source
    and one parse (they are planned separately and would each get their own); and after the dedupe.
    """
    schema = Schema.new_builder().column_by_metadata(time_column, DataTypes.TIMESTAMP_LTZ(3), "rowtime")
    if proctime:
        schema = schema.column_by_expression("proc", "PROCTIME()")
    schema = schema.watermark(time_column, "SOURCE_WATERMARK()")
    stream = table_env.to_changelog_stream(table)
    return table_env.from_changelog_stream(stream, schema.build(), ChangelogMode.insert_only())


def bound_local_heap(job: FeatureJobSettings) -> None:
    """A fixed heap (-Xms = -Xmx) for the JVM PyFlink starts on its first call (it hosts the local mini-cluster),
    unless `JVM_ARGS` sets -Xmx; one in Flink's `env.java.opts.all` still wins. No effect once that JVM runs.
    Fixed, so that G1 takes it at once instead of growing into it step by step."""
    jvm_args = os.environ.get("JVM_ARGS", "")
    if "-Xmx" not in jvm_args:
        os.environ["JVM_ARGS"] = f"{jvm_args} -Xms{job.local_heap_mb}m -Xmx{job.local_heap_mb}m".strip()


def build(settings: Settings, job: FeatureJobSettings, jobmanager: str | None = None) -> StreamExecutionEnvironment:
    (settings.state_dir / "flink" / "tmp").mkdir(parents=True, exist_ok=True)
    if jobmanager is None:
        bound_local_heap(job)
    env = StreamExecutionEnvironment.get_execution_environment(_configuration(settings, job, jobmanager))
    env.set_python_executable(sys.executable)
    table_env = StreamTableEnvironment.create(env)
    _table_config(table_env, job)

    table_env.execute_sql(sql.PARSE_FUNCTION)
    table_env.execute_sql(sql.EVENT_TIME_FUNCTION)
    skew_s = settings.max_clock_skew_s
    table_env.execute_sql(sql.source_table(settings.topics.events, settings.kafka_bootstrap, job.group_id, job, skew_s))
    table_env.execute_sql(sql.dead_letter_table(settings.topics.events_dlq, settings.kafka_bootstrap))
    parsed = as_insert_only(table_env, table_env.sql_query(sql.parsed(skew_s)), "parsed_time", proctime=True)
    table_env.create_temporary_view("parsed", parsed)
    deduped = as_insert_only(table_env, table_env.sql_query(sql.FIRST_DELIVERIES), "event_time", proctime=False)
    table_env.create_temporary_view("deduped", deduped)

    statements = table_env.create_statement_set()
    statements.add_insert_sql(sql.dead_letter_insert(job))
    windows = table_env.to_changelog_stream(table_env.sql_query(sql.windows_query(job)))
    (
        windows.filter(lambda row: row.get_row_kind() != RowKind.UPDATE_BEFORE)
        .map(WindowWriter(settings, job.redis_depth, job.redis_ttl_s, job.metrics_port), output_type=Types.LONG())
        .name("redis-and-features-topic")
        .sink_to(_discard())  # the writer did the work; Flink runs only what ends in a sink
    )
    statements.attach_as_datastream()
    return env


def _discard() -> Sink:
    return Sink(get_gateway().jvm.org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink())


def run(settings: Settings, job: FeatureJobSettings, jobmanager: str | None = None) -> None:
    """Run until cancelled (the Kafka source is unbounded)."""
    build(settings, job, jobmanager).execute(JOB_NAME)
